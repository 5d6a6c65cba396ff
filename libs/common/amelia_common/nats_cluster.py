"""A real NATS JetStream cluster on loopback, from the same `nats-server` the embedded NATS uses.

For trying the scale-out topology on one machine (`amelia cluster up`) and for the tests that
kill nodes under load. Each node is a plain `nats-server --jetstream --cluster …` with its own
store, pid file and log under `<root>/<name>/`, listening on 127.0.0.1: a client port, a route
port (the nodes find each other through `--routes`) and a monitoring port (its `/jsz` says who
leads JetStream and every stream, and whether each replica is current). `cluster.json` under the
root keeps the ports, so another process (`amelia cluster status`, `down`) finds the same nodes.
Nothing here is a cluster of our own making: election, replication and client failover are
nats-server's and nats-py's (NATS_URL lists every node).

Like the embedded servers, a node is known by its folder: `pid()` reads its pid file, `start()`
reuses a node running there or starts it again on the same store (it rejoins and catches up),
`stop()` stops whatever runs there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from amelia_common.embedded import (
    NATS_STOP,
    EmbeddedStartError,
    log_tail,
    nats_server_binary,
    running_pid,
    stop_process,
)
from amelia_common.logging import get_logger
from amelia_common.ports import free_port, port_is_free

log = get_logger("amelia.nats_cluster")

CLUSTER_NAME = "amelia"
STATE_FILE = "cluster.json"
# NATS' conventional ports: clients 4222, routes 6222, monitoring 8222 (one more per node).
ROUTE_PORT_OFFSET = 2000
MONITOR_PORT_OFFSET = 4000


@dataclass
class NatsNode:
    """One nats-server of the cluster; `routes` are the other nodes' route URLs."""

    root: Path
    name: str
    port: int
    route_port: int
    monitor_port: int
    routes: list[str] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats://127.0.0.1:{self.route_port}"

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def pid_file(self) -> Path:
        return self.folder / "nats-server.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "nats-server.log"

    def pid(self) -> int | None:
        """The node's pid, while it runs."""
        if self._process is not None and self._process.poll() is not None:
            self._process = None  # ours, and dead: reaped now
        return running_pid(self.pid_file)

    def command(self) -> list[str]:
        return [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(self.folder / "jetstream"),
            "--server_name",
            self.name,
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--cluster_name",
            CLUSTER_NAME,
            "--cluster",
            self.route_url,
            "--routes",
            ",".join(self.routes),
            "--pid",
            str(self.pid_file),
            "--log",
            str(self.log_file),
        ]

    def launch(self) -> None:
        """Start the node in the background (or leave the one running there); `ready()` waits."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.pid() is not None:
            return
        for port in (self.port, self.route_port, self.monitor_port):
            if not port_is_free(port):
                raise EmbeddedStartError(
                    f"NATS node {self.name}: port {port} is in use by another process; pick "
                    f"other ports (amelia cluster up --port)"
                )
        self.pid_file.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on a terminal reaches only whoever supervises it
        )

    def ready(self, timeout: float = 30.0) -> None:
        """Wait until the node answers its monitoring port (it then accepts clients)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedStartError(
                    f"NATS node {self.name} exited with code {self._process.returncode}: "
                    f"{log_tail(self.log_file)}"
                )
            if self.pid() is not None and self.monitor("healthz") is not None:
                return
            time.sleep(0.05)
        raise EmbeddedStartError(
            f"NATS node {self.name} did not answer in {timeout}s: {log_tail(self.log_file)}"
        )

    def start(self, timeout: float = 30.0) -> str:
        """Start the node (again) on its store and ports; returns its URL."""
        self.launch()
        self.ready(timeout)
        return self.url

    def monitor(self, endpoint: str) -> dict[str, Any] | None:
        """A monitoring endpoint's JSON (`jsz`, `healthz`, …), or None while it does not answer."""
        url = f"http://127.0.0.1:{self.monitor_port}/{endpoint}"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                found: dict[str, Any] = json.load(reply)
                return found
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would go (the tests' fault)."""
        pid = self.pid()
        if pid is not None:
            stop_process(pid, ((signal.SIGKILL, 5.0),), self._process)
        self._process = None

    def stop(self) -> None:
        """Stop the node running on this store, whoever started it (SIGTERM, then SIGKILL)."""
        proc, self._process = self._process, None
        pid = self.pid()
        if pid is not None:
            stop_process(pid, NATS_STOP, proc)
        elif proc is not None and proc.poll() is None:  # started here, no pid file yet
            stop_process(proc.pid, NATS_STOP, proc)


@dataclass
class NatsCluster:
    """`size` clustered nats-servers with JetStream under `root`."""

    root: Path
    nodes: list[NatsNode]

    @classmethod
    def on_ports(cls, root: Path, size: int = 3, port: int = 4222) -> NatsCluster:
        """Nodes on client ports `port`…, route ports `port`+2000…, monitoring `port`+4000…."""
        return cls._make(
            root,
            [
                (port + i, port + ROUTE_PORT_OFFSET + i, port + MONITOR_PORT_OFFSET + i)
                for i in range(size)
            ],
        )

    @classmethod
    def on_free_ports(cls, root: Path, size: int = 3) -> NatsCluster:
        """Nodes on free ports, all different (`ports.free_port`: held until they bind)."""
        ports = [free_port() for _ in range(3 * size)]
        triples = [(ports[i], ports[i + 1], ports[i + 2]) for i in range(0, len(ports), 3)]
        return cls._make(root, triples)

    @classmethod
    def _make(cls, root: Path, ports: list[tuple[int, int, int]]) -> NatsCluster:
        if not 1 <= len(ports) <= 5:
            raise ValueError("a NATS cluster here has 1 to 5 nodes (JetStream replicas <= 5)")
        nodes = [
            NatsNode(root, f"n{i + 1}", client, route, monitor)
            for i, (client, route, monitor) in enumerate(ports)
        ]
        for node in nodes:
            node.routes = [other.route_url for other in nodes if other is not node]
        return cls(root, nodes)

    @classmethod
    def at(cls, root: Path, size: int, port: int) -> NatsCluster:
        """The cluster to start under `root`: the one kept there when it has this shape (its
        running nodes are reused), else a new one of `size` nodes from client port `port`.
        Raises EmbeddedStartError when nodes of another shape still run there."""
        kept = cls.load(root)
        if kept is not None and len(kept.nodes) == size and kept.nodes[0].port == port:
            return kept
        if kept is not None and any(node.pid() is not None for node in kept.nodes):
            raise EmbeddedStartError(
                f"a NATS cluster of {len(kept.nodes)} nodes from port {kept.nodes[0].port} "
                f"runs under {root}: stop it first (amelia cluster down)"
            )
        return cls.on_ports(root, size, port)

    @property
    def stream_replicas(self) -> int:
        """How many copies of a stream to keep: 3, or every node of a smaller cluster."""
        return min(3, len(self.nodes))

    @classmethod
    def load(cls, root: Path) -> NatsCluster | None:
        """The cluster whose ports `cluster.json` under `root` keeps (None when there is none)."""
        try:
            saved = json.loads((root / STATE_FILE).read_text())
            ports = [(n["port"], n["route_port"], n["monitor_port"]) for n in saved["nodes"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls._make(root, ports)

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        nodes = [
            {
                k: v
                for k, v in asdict(n).items()
                if k in ("name", "port", "route_port", "monitor_port")
            }
            for n in self.nodes
        ]
        (self.root / STATE_FILE).write_text(json.dumps({"nodes": nodes}, indent=2))

    @property
    def url(self) -> str:
        """NATS_URL for this cluster: every node, comma-separated."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no NATS node {name!r} (nodes: {[n.name for n in self.nodes]})")

    def start(self, timeout: float = 60.0) -> str:
        """Start every node (reusing running ones) and wait until JetStream has a meta leader
        every node knows; returns NATS_URL."""
        self.save()
        for node in self.nodes:
            node.launch()
        try:
            for node in self.nodes:
                node.ready(timeout)
            self.wait_for_leader(timeout)
        except EmbeddedStartError:
            self.stop()
            raise
        log.info("nats cluster ready", url=self.url, root=str(self.root))
        return self.url

    def wait_for_leader(self, timeout: float = 60.0) -> str:
        """The JetStream meta leader's name, once every running node agrees on one."""
        deadline = time.monotonic() + timeout
        while True:
            leaders = {
                (node.monitor("jsz") or {}).get("meta_cluster", {}).get("leader", "")
                for node in self.nodes
                if node.pid() is not None
            }
            if len(leaders) == 1 and (leader := leaders.pop()):
                return leader
            if time.monotonic() > deadline:
                raise EmbeddedStartError(
                    f"the NATS cluster under {self.root} elected no JetStream leader in "
                    f"{timeout:.0f}s: {log_tail(self.nodes[0].log_file)}"
                )
            time.sleep(0.1)

    def status(self) -> list[dict[str, Any]]:
        """Per node: pid, URL, whether it answers its monitoring port and, when it does, its
        JetStream view (meta leader, streams with their leader and how current each replica is)."""
        report = []
        for node in self.nodes:
            jsz = node.monitor("jsz?streams=true") if node.pid() is not None else None
            streams = []
            for account in (jsz or {}).get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    cluster = stream.get("cluster") or {}
                    streams.append(
                        {
                            "stream": stream.get("name", ""),
                            "leader": cluster.get("leader", ""),
                            "replicas": [
                                {
                                    "name": r.get("name", ""),
                                    "current": bool(r.get("current")),
                                    "lag": int(r.get("lag", 0)),
                                }
                                for r in cluster.get("replicas") or []
                            ],
                            "messages": int((stream.get("state") or {}).get("messages", 0)),
                        }
                    )
            report.append(
                {
                    "name": node.name,
                    "url": node.url,
                    "pid": node.pid(),
                    "meta_leader": (jsz or {}).get("meta_cluster", {}).get("leader", ""),
                    # Running but silent (frozen, overloaded): its clients leave it, see nats_client.
                    "answers": jsz is not None,
                    "streams": streams,
                }
            )
        return report

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def remove(self) -> None:
        """Stop every node and delete their stores (a fresh cluster next time)."""
        import shutil

        self.stop()
        for node in self.nodes:
            shutil.rmtree(node.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.remove(self.root / STATE_FILE)
