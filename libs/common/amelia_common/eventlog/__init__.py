"""The event log's client: how every service publishes to, subscribes to and reads the one stream.

Subject scheme (the only place it is defined; docs/events.md explains it):

    amelia.events.<collection>.<resource-id>.<type>

e.g. `amelia.events.runs.4f1c….run.token` for `subject="runs/4f1c…"`, `type="run.token"`.
Events without a subject use `_._`. Each message's payload is a serialized `amelia.v1.Event`
(without its sequence: JetStream assigns that), and its `Nats-Msg-Id` header is the event id
(`client:<id>` for an event a client sent through PublishEvent, so client ids never collide with
the services' own), so a retried publish is stored once within the dedup window.

Three things live here, so every service (and the events service itself) behaves the same:

- `EventLog.publish` / `publish_event`: stores an event and returns it with its sequence, only
  after JetStream acknowledged it. While NATS is unreachable a publish is retried (same id, so
  never stored twice) for `EVENTS_PUBLISH_TIMEOUT_SECONDS`, with at most `EVENTS_PUBLISH_BUFFER`
  publishes waiting at once; past either bound it raises `EventLogUnavailableError`. Nothing is
  dropped silently: `EventLog.stats` counts what waited, was retried and was refused, and the
  log says so too. `EventLog.pipeline()` / `publish_events` write several events in order
  without waiting for each acknowledgement (one round trip for a burst, order kept).
- `EventLog.read`: an `EventReader` over the log (filter + start position, history then live, or
  history only). It reads through an ephemeral JetStream pull consumer in small batches, asking
  for the next batch only when the caller consumed the previous one, so a slow reader costs a
  bounded amount of memory and reads the log at its own pace. It survives a NATS restart by
  recreating its consumer just after the last event it returned: no gap, no duplicate.
- `EventLog.subscribe` / `unsubscribe`: the seed's EventBus semantics on top of `read`: many
  handlers per type pattern, called in order for each event; one handler's exception is logged
  and never stops the others.
"""

from amelia_common.event_names import (
    MAX_SUBJECT_LENGTH,
    MAX_TYPE_LENGTH,
    MAX_TYPE_PATTERNS,
    InvalidEventError,
    subject_tokens,
    type_pattern_tokens,
    validate_type,
)
from amelia_common.eventlog.envelope import (
    CLIENT_ID_NAMESPACE,
    MAX_CORRELATION_ID_LENGTH,
    MAX_SEQUENCE,
    MAX_SOURCE_LENGTH,
    MESH_TYPE_FAMILIES,
    SUBJECT_PREFIX,
    UNDECODABLE_TYPE,
    EventLogUnavailableError,
    ReusedIdError,
    TooManyReadersError,
    check_client_type,
    content_problem,
    decode_event,
    event_data,
    filter_subjects,
    fit_data,
    make_event,
    nats_subject,
    stream_config,
    timestamp_problem,
    validate_event,
)
from amelia_common.eventlog.log import (
    EventLog,
    Handler,
    Prepared,
    PublishStats,
)
from amelia_common.eventlog.pipeline import PublishPipeline
from amelia_common.eventlog.reader import (
    EventReader,
    StartAt,
)

__all__ = [
    "CLIENT_ID_NAMESPACE",
    "MAX_CORRELATION_ID_LENGTH",
    "MAX_SEQUENCE",
    "MAX_SOURCE_LENGTH",
    "MAX_SUBJECT_LENGTH",
    "MAX_TYPE_LENGTH",
    "MAX_TYPE_PATTERNS",
    "MESH_TYPE_FAMILIES",
    "SUBJECT_PREFIX",
    "UNDECODABLE_TYPE",
    "EventLog",
    "EventLogUnavailableError",
    "EventReader",
    "Handler",
    "InvalidEventError",
    "Prepared",
    "PublishPipeline",
    "PublishStats",
    "ReusedIdError",
    "StartAt",
    "TooManyReadersError",
    "check_client_type",
    "content_problem",
    "decode_event",
    "event_data",
    "filter_subjects",
    "fit_data",
    "make_event",
    "nats_subject",
    "stream_config",
    "subject_tokens",
    "timestamp_problem",
    "type_pattern_tokens",
    "validate_event",
    "validate_type",
]
