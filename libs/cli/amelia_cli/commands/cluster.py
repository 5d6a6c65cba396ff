"""`amelia cluster up|status|down`: a NATS JetStream cluster on loopback, to try scale-out.

`up` starts the nodes in the background under `AMELIA_DATA_DIR/nats-cluster` and prints the
settings that point the mesh at them (NATS_URL with every node, 3 stream replicas); `status`
shows each node, the JetStream meta leader and, per stream, its leader and whether each replica
is current; `down` stops the nodes (`--purge` also deletes their stores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from amelia_cli.consoles import console, err
from amelia_cli.help_text import App
from amelia_common.embedded import EmbeddedStartError
from amelia_common.nats_cluster import NatsCluster
from amelia_common.settings import get_settings

cluster_app = App(
    help="A NATS JetStream cluster on this machine (scale-out on a laptop).",
    no_args_is_help=True,
)


def cluster_root() -> Path:
    return get_settings().data_dir / "nats-cluster"


def _existing() -> NatsCluster:
    cluster = NatsCluster.load(cluster_root())
    if cluster is None:
        err.print(f"no NATS cluster under {cluster_root()}: start one with `amelia cluster up`")
        raise typer.Exit(1)
    return cluster


def mesh_settings(cluster: NatsCluster) -> dict[str, str]:
    """What the services need to run on `cluster`: every node, and streams kept on 3 nodes
    (or on every node of a smaller cluster)."""
    replicas = str(cluster.stream_replicas)
    return {
        "NATS_URL": cluster.url,
        "EVENTS_STREAM_REPLICAS": replicas,
        "RUNS_QUEUE_REPLICAS": replicas,
    }


@cluster_app.command("up")
def up(
    nodes: int = typer.Option(3, "--nodes", "-n", min=1, max=5, help="How many nats-servers."),
    port: int = typer.Option(
        4222,
        "--port",
        help="First client port (routes at +2000, monitoring at +4000, one more per node).",
    ),
) -> None:
    """Start the cluster (or the nodes of it that are down) and print its settings."""
    try:
        cluster = NatsCluster.at(cluster_root(), nodes, port)
        with console.status(f"starting {nodes} nats-servers and electing a JetStream leader…"):
            cluster.start()
    except EmbeddedStartError as exc:
        err.print(Text(str(exc), style="red"))
        raise typer.Exit(1) from None
    console.print(f"NATS cluster of {nodes} ready under {cluster_root()}. Run the mesh on it with:")
    for name, value in mesh_settings(cluster).items():
        console.print(f"{name}={value}", soft_wrap=True, highlight=False)


def _replica_state(replica: dict[str, Any]) -> str:
    if replica["current"]:
        return f"{replica['name']} current"
    return f"{replica['name']} [red]behind by {replica['lag']}[/red]"


@cluster_app.command("status")
def status() -> None:
    """Each node, the JetStream meta leader, and every stream's leader and replicas."""
    cluster = _existing()
    report = cluster.status()
    nodes = Table(title="NATS cluster", title_justify="left")
    for column in ("node", "url", "pid", "meta leader"):
        nodes.add_column(column)
    for node in report:
        alive = node["pid"] is not None
        nodes.add_row(
            node["name"],
            node["url"],
            str(node["pid"]) if alive else "[red]down[/red]",
            node["meta_leader"] or "[red]none[/red]",
        )
    console.print(nodes)
    streams = Table(title="Streams (as their leader sees them)", title_justify="left")
    for column in ("stream", "leader", "replicas", "messages"):
        streams.add_column(column)
    for node in report:
        for stream in node["streams"]:
            if stream["leader"] != node["name"]:
                continue  # the leader's view says whether the others are current
            replicas = ", ".join(_replica_state(r) for r in stream["replicas"])
            streams.add_row(stream["stream"], stream["leader"], replicas, str(stream["messages"]))
    console.print(streams)
    if not any(node["pid"] for node in report):
        raise typer.Exit(1)


@cluster_app.command("down")
def down(
    purge: bool = typer.Option(False, "--purge", help="Also delete the nodes' stores."),
) -> None:
    """Stop every node of the cluster."""
    cluster = _existing()
    if purge:
        cluster.remove()
    else:
        cluster.stop()
    console.print(
        f"NATS cluster under {cluster_root()} stopped" + (" and removed" if purge else "")
    )
