"""The gateway's own settings: how many readers of the event log its subscriptions may open.

Every other setting of the gateway is one of the mesh's (`amelia_common.settings.Settings`).
These four are the gateway's alone and are read the same way, from the environment, then
`.env`; `create_app` takes them explicitly too (tests).

Each StreamEvents call the gateway opens can hold a JetStream consumer on the event log's
stream, and the stream takes a bounded number of them: the events service sets no
`max_consumers` on it, so it is the server's default, 1000 per stream since nats-server 2.15
(`default_max_consumers`; 2.10 has none), or the account's limit. Past it every new reader of
the mesh is refused — another client's subscription, `amelia events -f`, a run's stream (QA F4:
20 sockets of 100 catch-up subscriptions did that). So the gateway holds its share:

- a **filter** (a topic: the one shared live StreamEvents call for a filter) is at most one
  consumer (the events service's tap for it): GATEWAY_MAX_FILTERS of them at once in the
  gateway, WS_MAX_FILTERS per socket; a subscribe for one more is refused, RESOURCE_EXHAUSTED;
- a **replay** (a catch-up subscription's own StreamEvents call, from its `since` until it hands
  over to its topic) is one consumer, and one more for a moment while the gateway asks whether
  it has caught up (a one-event ListEvents page): GATEWAY_MAX_REPLAYS at once in the gateway,
  WS_MAX_REPLAYS per socket; a catch-up past either waits its turn, and replays from its `since`
  when it comes (no event missed, none twice).

At the defaults the gateway holds at most 200 + 2 × 64 = 328 consumers, a third of the
stream's 1000: three gateways fit, with room left for the agents service's readers, ListEvents
pages and `amelia events -f`. One socket holds at most 20 + 2 × 4 = 28. (Four replays of one
socket at once also keep it within its byte budget: each waits while the socket holds half of
WS_SEND_QUEUE_BYTES, then sends a message of at most 1 MiB, so 8 + 4 MiB of the default 16.)
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UpstreamLimits(BaseSettings):
    """The gateway's limits on the upstream event streams of its WebSocket subscriptions."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", case_sensitive=False, extra="ignore"
    )

    # Distinct filters (topics) the gateway follows at once; a subscribe needing one more is
    # refused with RESOURCE_EXHAUSTED (a subscription on a filter already followed never is).
    GATEWAY_MAX_FILTERS: int = Field(default=200, ge=1)
    # Catch-up subscriptions replaying (on a stream of their own) at once in the gateway; more
    # wait their turn.
    GATEWAY_MAX_REPLAYS: int = Field(default=64, ge=1)
    # Distinct filters one socket's subscriptions may have at once; more are refused.
    WS_MAX_FILTERS: int = Field(default=20, ge=1)
    # Catch-up subscriptions of one socket replaying at once; more wait their turn.
    WS_MAX_REPLAYS: int = Field(default=4, ge=1)
