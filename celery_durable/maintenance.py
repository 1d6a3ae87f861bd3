"""What operators run on the fleet's shared state: circuit breakers, checksum checks and
signing, schema migrations, a recovery sweep now. A part of Durable, kept apart so that the
composition root stays about composing."""

from __future__ import annotations

import builtins
import logging
from datetime import datetime

from celery_durable.engine.actors import actor
from celery_durable.engine.recovery import RecoveryReport, sweep
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import InvalidFlowOption
from celery_durable.model.records import BreakerState
from celery_durable.persistence import migrate
from celery_durable.persistence.database import Database
from celery_durable.persistence.flow_rows import BreakerStatus
from celery_durable.persistence.migrate import uses_database
from celery_durable.persistence.signing import SignReport, sign
from celery_durable.persistence.store import CheckpointStore
from celery_durable.policies.breakers import BreakerPolicy

logger = logging.getLogger(__name__)


class Maintenance:
    """Durable's maintenance methods; Durable sets the attributes."""

    db: Database
    store: CheckpointStore
    runtime: Runtime

    def breaker(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        window: float = 60.0,
        reset_after: float = 30.0,
    ) -> str:
        """Declare a circuit breaker shared by every worker: ``failure_threshold`` failures
        within ``window`` seconds open it; while open, nodes behind it wait in the database
        (no worker held, no attempt counted); after ``reset_after`` seconds one probe goes
        through. Returns the name, for ``@g.node(breaker=...)`` and ``ctx.step(breaker=...)``."""
        self.runtime.flow.declare(BreakerPolicy(name, failure_threshold, window, reset_after))
        return name

    @uses_database()
    def breakers(self) -> builtins.list[BreakerStatus]:
        """Every declared breaker with its shared state."""
        return self.runtime.flow.breakers()

    @uses_database()
    def set_breaker(
        self, name: str, state: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """An operator opens ("open": as if it had just tripped) or closes ("closed") a breaker;
        who did it (and why) is kept on the breaker's row and logged."""
        try:
            wanted = BreakerState(state)
        except ValueError:
            raise InvalidFlowOption(f"breaker state {state!r}", "use open or closed") from None
        if wanted == BreakerState.HALF_OPEN:
            raise InvalidFlowOption("breaker state 'half_open'", "use open or closed")
        who = actor(by) if reason is None else f"{actor(by)}: {reason}"
        logger.warning("circuit breaker %s set %s by %s", name, wanted, who)
        self.runtime.flow.set(name, wanted, who[:200])

    @uses_database()
    def verify(self, since: datetime | None = None) -> builtins.list[tuple[str, int, str]]:
        """Check every checkpoint and execution row (written since ``since``) against its
        checksum; returns (execution, seq, "checkpoint" or "row") for each that fails."""
        return self.store.verify(since)

    @uses_database()
    def sign_checksums(self) -> SignReport:
        """After checksum keys are set or rotated: sign every row and checkpoint as the
        settings sign now, each checked first as it was signed; what does not check out is
        reported and left as it is."""
        return sign(self.store)

    def migrate(self) -> tuple[str | None, str]:
        """Create or upgrade the schema; a no-op when it is current."""
        with self.db.reachable():
            return migrate.upgrade(self.db)

    @uses_database()
    def recover(self) -> RecoveryReport:
        """One recovery sweep now (workers also sweep on start and periodically)."""
        return sweep(self.runtime)
