"""`amelia` — the command-line front of the mesh.

`amelia up` starts everything (embedded PostgreSQL + NATS when no URLs are set) and waits until
every service reports SERVING; `amelia status` checks each part; `amelia down` stops the mesh
running here, detached (`amelia up --detach`) or in another terminal (`amelia up`, `make run`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import typer

from amelia_cli.client import said
from amelia_cli.commands import git as _git  # noqa: F401 - runs diff/land/discard
from amelia_cli.commands.agents import agents_app, run, runs_app
from amelia_cli.commands.cluster import cluster_app
from amelia_cli.commands.crons import crons_app
from amelia_cli.commands.docs import docs_app, ingest, search
from amelia_cli.commands.events import events
from amelia_cli.commands.status import endpoints_table
from amelia_cli.commands.status import show as show_status
from amelia_cli.commands.threads import threads_app
from amelia_cli.consoles import console, err
from amelia_cli.health import probe_all
from amelia_cli.help_text import App
from amelia_cli.located import addresses_over_mesh, given_up, running_mesh
from amelia_cli.mesh import SERVICES, client_host
from amelia_cli.supervisor import (
    MAX_REPLICAS,
    AlreadyRunningError,
    MeshStartError,
    RestartPolicy,
    Supervisor,
    event_log_switch_warning,
    read_state,
    refuse_if_running,
    revive_running,
)
from amelia_cli.tui import tui
from amelia_common.embedded import EmbeddedStartError, process_alive
from amelia_common.logging import configure_logging
from amelia_common.settings import Settings, get_settings

app = App(
    help="Amelia: local-first LLM workflow orchestration mesh.",
    no_args_is_help=True,
)
app.command()(ingest)
app.command()(search)
app.command()(run)
app.add_typer(docs_app, name="docs")
app.add_typer(agents_app, name="agents")
app.add_typer(runs_app, name="runs")
app.add_typer(threads_app, name="threads")
app.add_typer(crons_app, name="crons")
app.add_typer(cluster_app, name="cluster")
app.command()(events)
app.command()(tui)


def dashboard_url(settings: Settings, *, with_token: bool = True) -> str:
    """The dashboard's address; with a token, the one link that signs the browser in (shown
    only on the user's own terminal, never written to a log)."""
    url = f"http://{client_host(settings)}:{settings.PORT}/"
    if settings.api_token and with_token:
        return f"{url}?token={quote(settings.api_token)}"
    return url


def loopback_warning(settings: Settings) -> str | None:
    """Why the mesh listens on loopback although HOST says otherwise, if it does."""
    if settings.bind_host == settings.HOST:
        return None
    return (
        f"HOST={settings.HOST} but AMELIA_API_TOKEN is not set: every service listens on "
        f"{settings.bind_host} only. Set AMELIA_API_TOKEN to accept other machines."
    )


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for every service to be SERVING."),
    cluster: int = typer.Option(
        0,
        "--cluster",
        min=0,
        max=5,
        help="Run NATS as this many clustered nodes on loopback (streams kept on min(3, N)).",
    ),
    replicas: int = typer.Option(
        1,
        "--replicas",
        "-r",
        min=1,
        max=MAX_REPLICAS,
        help="Processes of each of events, agents and rag (on consecutive free ports; every "
        "client is given them all).",
    ),
) -> None:
    """Start embedded PostgreSQL and NATS (unless URLs are set) and every service."""
    settings = get_settings()
    for warning in (loopback_warning(settings), event_log_switch_warning(settings, cluster)):
        if warning:
            err.print(said(("warning:", "yellow"), f" {warning}"))
    # Foreground or not, a second `up` here refuses before it starts (or stops) anything.
    try:
        refuse_if_running(settings.data_dir)
    except AlreadyRunningError as exc:
        # What it gave up on is started again by it (QA s26: five `kill -9` in a minute, the
        # part FAILED, and `up` only said it was already running).
        revived = revive_running(settings.data_dir)
        if revived:
            console.print(
                said(
                    f"amelia up is already running here; asked it to start again what it gave "
                    f"up on: {', '.join(revived)} — `amelia status` shows how it goes."
                )
            )
            return
        if revived is None:
            exc = AlreadyRunningError(
                f"{exc} It gave up on {', '.join(sorted(given_up(read_state(settings.data_dir))))}"
                " and cannot be asked to start it again (it predates that): stop it (Ctrl-C in "
                "its terminal, or `amelia down`) and run `amelia up` again."
            )
        err.print(said(str(exc)))
        raise typer.Exit(1) from exc
    if detach:
        _up_detached(settings, timeout, cluster, replicas)
        return
    configure_logging(settings, "amelia.up")
    try:
        policy = RestartPolicy(first_delay=settings.RESTART_DELAY_SECONDS)
        asyncio.run(
            _run(Supervisor(settings, cluster=cluster, policy=policy, replicas=replicas), timeout)
        )
    except (MeshStartError, EmbeddedStartError) as exc:
        err.print(said(("amelia up failed:", "red"), f" {exc}"))
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:  # before anything started
        raise typer.Exit(130) from None
    console.print("stopped.")


async def _run(supervisor: Supervisor, timeout: float) -> None:
    """Start the mesh, watch it until Ctrl-C / SIGTERM, then stop it in order (a second
    Ctrl-C stops waiting for the services to drain)."""
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            supervisor.hurry()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    supervisor.revive_on(loop)
    local_model = "" if supervisor.local_model_off else " and the local model"
    try:
        with console.status(f"starting PostgreSQL, NATS{local_model}…"):
            settings = await supervisor.start_infrastructure()  # bounded; stopped below
        if stop.is_set():
            return
        await supervisor.start_services()
        with console.status(f"waiting for every service{local_model} to report SERVING…"):
            waiting = asyncio.create_task(supervisor.wait_until_serving(timeout))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiting, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not waiting.done():
                waiting.cancel()
                return
            waiting.result()
        probes = await probe_all(settings, supervisor.state())
        console.print(endpoints_table(probes))
        console.print(
            f"Dashboard and HTTP API: {dashboard_url(settings, with_token=console.is_terminal)}"
            f"   data: {settings.data_dir}   logs: {supervisor.log_dir}"
            "   Ctrl-C stops everything."
        )
        await supervisor.watch(stop)
    finally:
        model_then = "" if supervisor.local_model_off else "the local model, "
        with console.status(f"stopping services, then {model_then}NATS and PostgreSQL…"):
            await supervisor.stop()


def _up_detached(settings: Settings, timeout: float, cluster: int = 0, replicas: int = 1) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "logs").mkdir(exist_ok=True)
    out = open(settings.data_dir / "logs" / "amelia-up.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "amelia_cli", "up", "--timeout", str(timeout)]
        + (["--cluster", str(cluster)] if cluster else [])
        + (["--replicas", str(replicas)] if replicas > 1 else []),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    with console.status("starting in the background…"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err.print(said(("amelia up failed", "red"), f"; see {out.name}"))
                raise typer.Exit(1)
            state = read_state(settings.data_dir)
            if state:
                running, _ = running_mesh()
                probes = asyncio.run(probe_all(running, state))
                if all(p.ok for p in probes):
                    console.print(endpoints_table(probes))
                    url = dashboard_url(settings, with_token=console.is_terminal)
                    console.print(said(f"Dashboard and HTTP API: {url}"))
                    console.print(
                        said(
                            f"running in the background (pid {proc.pid}); logs: {out.name}; "
                            "`amelia down` stops it."
                        )
                    )
                    return
            time.sleep(1.0)
    err.print(said((f"not SERVING after {timeout:.0f}s", "red"), f"; see {out.name}"))
    raise typer.Exit(1)


@app.command()
def status() -> None:
    """Every replica's health, NATS (its cluster's leaders), PostgreSQL, the local model and
    the run queue."""
    settings, state = running_mesh()
    for note in addresses_over_mesh(settings, state):
        err.print(said(("note:", "yellow"), f" {note}"))
    if not show_status(console, settings, state):
        raise typer.Exit(1)


@app.command()
def down(timeout: float = typer.Option(60.0, help="Seconds to wait for a clean stop.")) -> None:
    """Stop the mesh running here: one started with `amelia up --detach`, or a foreground
    `amelia up` / `make run` in another terminal."""
    settings, state = running_mesh()
    if not state:
        console.print(said(f"amelia is not running (no mesh state under {settings.data_dir})."))
        return
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with console.status("stopping…"):
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.3)
    console.print("stopped." if not read_state(settings.data_dir) else "[red]still running[/red]")


__all__ = ["SERVICES", "app"]
