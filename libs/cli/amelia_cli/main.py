"""`amelia` — the command-line front of the mesh.

`amelia up` starts everything (embedded PostgreSQL + NATS when no URLs are set) and waits until
every service reports SERVING; `amelia status` checks each part; `amelia down` stops a mesh
started with `amelia up --detach`.
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
from rich.console import Console
from rich.table import Table

from amelia_cli.commands.agents import agents_app, run, runs_app
from amelia_cli.commands.docs import docs_app, ingest, search
from amelia_cli.health import Probe, probe_all
from amelia_cli.mesh import SERVICES, client_host
from amelia_cli.supervisor import MeshStartError, Supervisor, read_state, state_file
from amelia_common.embedded import EmbeddedStartError
from amelia_common.logging import configure_logging
from amelia_common.settings import Settings, get_settings

app = typer.Typer(help="Amelia: local-first LLM workflow orchestration mesh.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
app.command()(ingest)
app.command()(search)
app.command()(run)
app.add_typer(docs_app, name="docs")
app.add_typer(agents_app, name="agents")
app.add_typer(runs_app, name="runs")


def endpoints_table(settings: Settings, probes: list[Probe]) -> Table:
    table = Table(title="Amelia mesh", title_justify="left")
    table.add_column("part")
    table.add_column("address")
    table.add_column("status")
    table.add_column("detail")
    for p in probes:
        colour = "green" if p.ok else "red"
        table.add_row(p.name, p.address, f"[{colour}]{p.status}[/{colour}]", p.detail)
    return table


def dashboard_url(settings: Settings) -> str:
    """The dashboard's address; with a token, the one link that signs the browser in."""
    url = f"http://{client_host(settings)}:{settings.PORT}/"
    return f"{url}?token={quote(settings.api_token)}" if settings.api_token else url


def _settings_with_running_state() -> Settings:
    """Settings, with the URLs of a running `amelia up` filled in when none are configured."""
    settings = get_settings()
    state = read_state(settings)
    if state:
        updates = {}
        if not settings.DATABASE_URL:
            updates["DATABASE_URL"] = str(state.get("database_url", ""))
        if not settings.NATS_URL:
            updates["NATS_URL"] = str(state.get("nats_url", ""))
        settings = settings.model_copy(update=updates)
    return settings


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for every service to be SERVING."),
) -> None:
    """Start embedded PostgreSQL and NATS (unless URLs are set) and every service."""
    settings = get_settings()
    if detach:
        _up_detached(settings, timeout)
        return
    configure_logging(settings, "amelia.up")
    supervisor = Supervisor(settings)
    try:
        with console.status("starting PostgreSQL and NATS…"):
            settings = supervisor.start_infrastructure()
        supervisor.start_services()
        asyncio.run(_run(supervisor, timeout))
    except (MeshStartError, EmbeddedStartError) as exc:
        err.print(f"[red]amelia up failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping services, NATS and PostgreSQL…"):
            supervisor.stop()
        console.print("stopped.")


async def _run(supervisor: Supervisor, timeout: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with console.status("waiting for every service to report SERVING…"):
        wait = asyncio.create_task(supervisor.wait_until_serving(timeout))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({wait, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            wait.cancel()
            return
        stopper.cancel()
        wait.result()
    probes = await probe_all(supervisor.settings)
    console.print(endpoints_table(supervisor.settings, probes))
    console.print(
        f"Dashboard and HTTP API: {dashboard_url(supervisor.settings)}   "
        f"logs: {supervisor.log_dir}   Ctrl-C stops everything."
    )
    await supervisor.watch(stop)


def _up_detached(settings: Settings, timeout: float) -> None:
    if read_state(settings):
        err.print("amelia is already running; `amelia status` shows it, `amelia down` stops it.")
        raise typer.Exit(1)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "logs").mkdir(exist_ok=True)
    out = open(settings.data_dir / "logs" / "amelia-up.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "amelia_cli", "up", "--timeout", str(timeout)],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    with console.status("starting in the background…"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err.print(f"[red]amelia up failed[/red]; see {out.name}")
                raise typer.Exit(1)
            if read_state(settings):
                probes = asyncio.run(probe_all(_settings_with_running_state()))
                if all(p.ok for p in probes):
                    console.print(endpoints_table(settings, probes))
                    console.print(
                        f"running in the background (pid {proc.pid}); `amelia down` stops it."
                    )
                    return
            time.sleep(1.0)
    err.print(f"[red]not SERVING after {timeout:.0f}s[/red]; see {out.name}")
    raise typer.Exit(1)


@app.command()
def status() -> None:
    """Health of every service, NATS and PostgreSQL."""
    settings = _settings_with_running_state()
    probes = asyncio.run(probe_all(settings))
    console.print(endpoints_table(settings, probes))
    if not all(p.ok for p in probes):
        raise typer.Exit(1)


@app.command()
def down(timeout: float = typer.Option(60.0, help="Seconds to wait for a clean stop.")) -> None:
    """Stop a mesh started with `amelia up --detach`."""
    settings = get_settings()
    state = read_state(settings)
    if not state:
        console.print("amelia is not running.")
        return
    pid = int(str(state["pid"]))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with console.status("stopping…"):
        while time.monotonic() < deadline and state_file(settings).exists():
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.3)
    console.print("stopped." if not read_state(settings) else "[red]still running[/red]")


__all__ = ["SERVICES", "app"]
