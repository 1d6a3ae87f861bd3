"""Celery signals celery-durable sends, for alerting and automation.

``intervention_required(sender=durable, execution_id=..., step=..., error=...)``: a saga's
compensation failed for good; the execution waits in ``needs_intervention`` for an operator
(fix the cause, then ``Execution.retry()``, or ``Execution.skip(step)`` to mark it done by hand).
"""

from celery.utils.dispatch import Signal

intervention_required = Signal(name="intervention_required")
