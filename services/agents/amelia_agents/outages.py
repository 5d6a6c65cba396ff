"""Which failures during a run are the infrastructure's, not the run's.

A worker needs PostgreSQL (runs, locks, checkpoints) and NATS (the queue, the event log). When
either cannot be reached, the pick-up stops where it is and the job goes back to the queue to be
tried again later — the checkpoint keeps the progress — instead of the run FAILING for an
outage it had no part in. Anything else (a node's exception, a model error) is the run's own.
"""

from __future__ import annotations

from amelia_common.errors import NATS, POSTGRES, dependency_unavailable
from amelia_common.eventlog import EventLogUnavailableError

_INFRASTRUCTURE = (POSTGRES, NATS)


def infrastructure_outage(exc: BaseException) -> str | None:
    """`PostgreSQL` or `NATS` when `exc` says that one cannot be reached; else None."""
    link: BaseException | None = exc
    seen: set[int] = set()
    while link is not None and id(link) not in seen:
        if isinstance(link, EventLogUnavailableError):
            return NATS
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    outage = dependency_unavailable(exc)
    if outage is not None and outage.dependency in _INFRASTRUCTURE:
        return outage.dependency
    return None
