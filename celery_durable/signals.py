"""Celery signals celery-durable sends, for alerting and automation.

``intervention_required(sender=durable, execution_id=..., step=..., error=...)``: a saga's
compensation failed for good, or a node of a graph with ``on_failure="intervene"`` ran out of
retries; the execution waits in ``needs_intervention`` for an operator (fix the cause, then
``Execution.retry()``, or ``Execution.skip(step)`` to mark it done by hand).

``execution_finished(sender=durable, execution_id=..., graph=..., status=...)``: a run reached
a final status (succeeded, failed, compensated, cancelled), by a node, a compensation or an
operation, in the process that committed it.

``execution_started(sender=durable, execution_id=..., graph=..., version=...)``: a run was
stored and its entry node sent, in the process that started it.

``node_failed(sender=durable, execution_id=..., graph=..., node=..., error=...)``: a node failed
for good (retries exhausted or not retried), before the run fails, compensates or stops.

``node_slow(sender=durable, execution_id=..., graph=..., node=..., seconds=...)``: a node ran
longer than ``slow_node_after``.

``execution_stuck(sender=durable, execution_id=..., graph=..., idle=...)``: a run has made no
commit for longer than ``stuck_after``; each process that sweeps tells it once per run and
version.
"""

from celery.utils.dispatch import Signal

intervention_required = Signal(name="intervention_required")
execution_finished = Signal(name="execution_finished")
execution_started = Signal(name="execution_started")
node_failed = Signal(name="node_failed")
node_slow = Signal(name="node_slow")
execution_stuck = Signal(name="execution_stuck")
