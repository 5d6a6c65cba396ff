"""NATS outages as the events service answers them: UNAVAILABLE naming NATS and its address.

Every RPC needs NATS. When it cannot be reached the caller hears which NATS and why, in one
form for all of them ("events: NATS at nats://… is unreachable: …"), with the shared
interceptor's server pushback (UNAVAILABLE, not retried by our channels: the caller decides).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from nats.aio.client import Client as NATS

from amelia_common.errors import NATS as NATS_NAME
from amelia_common.errors import AmeliaError, UnavailableError, dependency_unavailable
from amelia_common.nats_client import nats_servers
from amelia_common.settings import Settings


class NatsUnreachableError(UnavailableError):
    """UNAVAILABLE: the events service could not reach NATS (or JetStream did not answer)."""

    def __init__(self, message: str) -> None:
        AmeliaError.__init__(self, message)
        self.dependency = NATS_NAME
        self.detail = message


def nats_unreachable(nc: NATS, settings: Settings, detail: str) -> NatsUnreachableError:
    """The error for `detail`, saying whether the connection is down or JetStream is silent."""
    servers = ", ".join(nats_servers(settings))
    state = "did not answer" if nc.is_connected else "is unreachable"
    if not nc.is_connected and nc.last_error is not None:
        # Its type only: the message names NATS and its address already.
        detail += f" (last error: {type(nc.last_error).__name__})"
    return NatsUnreachableError(f"events: NATS at {servers} {state}: {detail}; try again shortly")


@contextlib.contextmanager
def naming_nats(nc: NATS, settings: Settings) -> Iterator[None]:
    """Re-raise a NATS outage escaping the block as `NatsUnreachableError`; anything else as is."""
    try:
        yield
    except NatsUnreachableError:
        raise
    except Exception as exc:
        if isinstance(exc, AmeliaError) and not isinstance(exc, UnavailableError):
            raise
        outage = dependency_unavailable(exc)
        if outage is None or outage.dependency != NATS_NAME:
            raise
        raise nats_unreachable(nc, settings, outage.detail or str(exc)) from exc
