"""The shared API token check, used by every gRPC service and the gateway.

One function so the comparison is the same everywhere: constant time (a `!=` leaks how many
leading characters matched), and "no token configured" means open.
"""

from __future__ import annotations

import hmac


def token_ok(expected: str, given: str) -> bool:
    """True when no token is configured, or `given` is it (compared in constant time)."""
    if not expected:
        return True
    return hmac.compare_digest(expected.encode(), given.encode())
