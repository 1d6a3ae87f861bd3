"""Celery signals celery-durable sends, for alerting and automation.

``intervention_required(sender=durable, execution_id=..., step=..., error=...)``: a saga's
compensation failed for good, or a node of a graph with ``on_failure="intervene"`` ran out of
retries; the execution waits in ``needs_intervention`` for an operator (fix the cause, then
``Execution.retry()``, or ``Execution.skip(step)`` to mark it done by hand).

``execution_finished(sender=durable, execution_id=..., graph=..., status=...)``: a run reached
a final status (succeeded, failed, compensated, cancelled), by a node, a compensation or an
operation, in the process that committed it.
"""

from celery.utils.dispatch import Signal

intervention_required = Signal(name="intervention_required")
execution_finished = Signal(name="execution_finished")
