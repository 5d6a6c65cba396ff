"""`amelia up` keeps the mesh alive: what dies is started again, what keeps dying is given up on
alone, Ctrl-C stops the services, then NATS, then PostgreSQL, and no log holds a secret.

The first tests run the real `Supervisor` over stand-in services (small Python processes) to pin
down its policy quickly. The others share the folder's real `amelia up --detach` (`running_mesh`, tests/e2e/conftest.py:
with an API token, provider keys and DEBUG logging; test_cli's commands used it first), and run
in this order: use the token over HTTP, WebSocket and
gRPC; `amelia status` from elsewhere; SIGKILL its NATS and PostgreSQL; SIGKILL a service until it
is given up on; Ctrl-C to its process group; up again (detached) on the same data, then `amelia
down`. Every log it wrote is searched for the secrets after the first and after the Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import websockets
from e2e_helpers import (
    DEADLINE,
    SECRETS,
    TOKEN,
    alive,
    amelia,
    ctrl_c_stop_order,
    leaks,
    mesh_pids,
    mesh_state,
    wait_for,
)

from amelia.v1 import agents_pb2, agents_pb2_grpc, events_pb2, events_pb2_grpc
from amelia_cli.mesh import ServiceSpec
from amelia_cli.supervisor import RestartPolicy, Supervisor, UnitState, state_file
from amelia_common.settings import Settings

# -- the policy, over stand-in services ---------------------------------------------------------


@dataclass(frozen=True)
class StandIn(ServiceSpec):
    """A service played by a Python one-liner."""

    code: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code]


CRASHER = StandIn("crasher", "", "", "PORT", code="import sys; sys.exit(3)")
SLEEPER = StandIn("sleeper", "", "", "PORT", code="import time; time.sleep(600)")


@pytest.fixture
def stand_in_settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, AMELIA_DATA_DIR=tmp_path / "data")


async def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_service_that_keeps_crashing_is_failed_alone(stand_in_settings: Settings) -> None:
    policy = RestartPolicy(burst=5, window=60, first_delay=0.05, max_delay=0.2)
    supervisor = Supervisor(stand_in_settings, services=[CRASHER, SLEEPER], policy=policy)
    stop = asyncio.Event()
    await supervisor.start_services()
    sleeper_pid = supervisor.services["sleeper"].pid()
    watching = asyncio.create_task(supervisor.watch(stop))
    try:
        crasher = supervisor.services["crasher"]
        await until(lambda: crasher.state == UnitState.FAILED, "the crasher to be given up on")
        assert crasher.restarts == 4  # started 5 times, crashed 5 times within the window
        await asyncio.sleep(1)  # given up on: not started again
        assert crasher.state == UnitState.FAILED and crasher.restarts == 4
        sleeper = supervisor.services["sleeper"]
        assert sleeper.state == UnitState.RUNNING and sleeper.pid() == sleeper_pid
        assert not watching.done()  # the supervisor keeps watching the rest

        state = json.loads(state_file(stand_in_settings.data_dir).read_text())
        failed = state["units"]["crasher"]
        assert failed["state"] == "FAILED" and failed["last_exit"] == "exit code 3"
        assert failed["log"] == str(stand_in_settings.data_dir / "logs" / "crasher.log")
        assert state["units"]["sleeper"]["state"] == "RUNNING"
        assert state["units"]["sleeper"]["pid"] == sleeper_pid
    finally:
        stop.set()
        await watching
        await supervisor.stop(grace=5)
    assert not alive(sleeper_pid)
    assert not state_file(stand_in_settings.data_dir).exists()


async def test_a_service_waiting_out_its_backoff_does_not_hold_up_the_others(
    stand_in_settings: Settings,
) -> None:
    """While the crasher waits a minute before its next start, a killed sleeper is noticed."""
    policy = RestartPolicy(first_delay=60)
    supervisor = Supervisor(stand_in_settings, services=[CRASHER, SLEEPER], policy=policy)
    stop = asyncio.Event()
    await supervisor.start_services()
    watching = asyncio.create_task(supervisor.watch(stop))
    try:
        crasher, sleeper = supervisor.services["crasher"], supervisor.services["sleeper"]
        await until(lambda: crasher.state == UnitState.RESTARTING, "the crasher's backoff")
        pid = sleeper.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: sleeper.state == UnitState.RESTARTING, "the sleeper's death noticed")
        assert sleeper.last_exit == "killed by SIGKILL"
        assert crasher.state == UnitState.RESTARTING and len(crasher.crashes) == 1
    finally:
        stop.set()
        await watching
        await supervisor.stop(grace=5)


# -- the real mesh ------------------------------------------------------------------------------

BEARER = (("authorization", f"Bearer {TOKEN}"),)


class Reader(threading.Thread):
    """Reads `run/mesh.json` over and over, as `amelia status` and a dashboard test do; keeps
    what it could not parse."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.reads = 0
        self.torn: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue
            try:
                json.loads(text)
            except ValueError:
                self.torn.append(text)
            self.reads += 1


def log_files(env: dict[str, str]) -> list[Path]:
    data = Path(env["AMELIA_DATA_DIR"])
    return [
        *(data / "logs").iterdir(),
        data / "nats" / "nats-server.log",
        data / "postgres" / "log",
    ]


def assert_no_log_holds_a_secret(env: dict[str, str]) -> None:
    files = log_files(env)
    assert {"amelia-up.log", "gateway.log", "agents.log"} <= {p.name for p in files}
    for path in files:
        found = leaks(path.read_text(errors="replace"), SECRETS)
        assert not found, f"{path}: {found[:3]}"


def publish(env: dict[str, str], subject: str) -> int:
    with grpc.insecure_channel(env["EVENTS_ADDRESS"]) as channel:
        reply = events_pb2_grpc.EventServiceStub(channel).PublishEvent(
            events_pb2.PublishEventRequest(
                event=events_pb2.Event(type="system.warning", subject=subject)
            ),
            metadata=BEARER,
            timeout=30,
        )
    return reply.event.sequence


def event_subject(env: dict[str, str], sequence: int) -> str:
    with grpc.insecure_channel(env["EVENTS_ADDRESS"]) as channel:
        reply = events_pb2_grpc.EventServiceStub(channel).GetEvent(
            events_pb2.GetEventRequest(name=f"events/{sequence}"), metadata=BEARER, timeout=30
        )
    return reply.event.subject


def events_of(env: dict[str, str], subject: str) -> list[events_pb2.Event]:
    with grpc.insecure_channel(env["EVENTS_ADDRESS"]) as channel:
        reply = events_pb2_grpc.EventServiceStub(channel).ListEvents(
            events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(subject=subject)),
            metadata=BEARER,
            timeout=30,
        )
    return list(reply.events)


def agent_names(env: dict[str, str]) -> set[str]:
    with grpc.insecure_channel(env["AGENTS_ADDRESS"]) as channel:
        reply = agents_pb2_grpc.AgentServiceStub(channel).ListAgents(
            agents_pb2.ListAgentsRequest(page_size=100), metadata=BEARER, timeout=30
        )
    return {agent.name for agent in reply.agents}


def create_agent(env: dict[str, str], agent_id: str) -> None:
    with grpc.insecure_channel(env["AGENTS_ADDRESS"]) as channel:
        agents_pb2_grpc.AgentServiceStub(channel).CreateAgent(
            agents_pb2.CreateAgentRequest(
                agent_id=agent_id, agent=agents_pb2.Agent(model="offline:echo")
            ),
            metadata=BEARER,
            timeout=30,
        )


def serving(env: dict[str, str]) -> bool:
    return amelia(env, "status").returncode == 0


def next_pid(env: dict[str, str], unit: str, old: int | None) -> int:
    """The pid of `unit` once it runs in a process other than `old`."""

    def new() -> int | None:
        pid = mesh_pids(env).get(unit)
        return pid if pid != old else None

    pid: int = wait_for(new, f"a new {unit} process")
    return pid


def kill_and_wait_back(env: dict[str, str], unit: str) -> tuple[float, float]:
    """SIGKILL `unit` and wait until the supervisor runs a new one, then until every part is
    SERVING; returns the seconds each took. (A start that fails is tried again: the process
    that ends up running may not be the first new one.)"""
    old = mesh_pids(env)[unit]
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    next_pid(env, unit, old)
    restarted = time.monotonic() - killed
    wait_for(
        lambda: serving(env) and mesh_state(env)["units"][unit]["state"] == "RUNNING",
        f"the mesh SERVING again after {unit} was killed",
    )
    assert mesh_pids(env)[unit] != old
    return restarted, time.monotonic() - killed


def test_up_says_on_its_terminal_that_it_listens_on_loopback_only(
    mesh_env: dict[str, str],
) -> None:
    """HOST=0.0.0.0 without a token: said before anything starts (here a taken port stops it)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(mesh_env["EVENTS_GRPC_PORT"])))
        holder.listen()
        refused = amelia(mesh_env | {"HOST": "0.0.0.0"}, "up")
    assert refused.returncode == 1 and "ports already in use" in refused.stderr
    assert "HOST=0.0.0.0" in refused.stderr and "127.0.0.1 only" in refused.stderr


def test_the_token_used_everywhere_reaches_no_log(running_mesh: dict[str, str]) -> None:
    env = running_mesh
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{env['PORT']}", timeout=60) as http:
        assert http.get("/v1/events", headers=bearer).status_code == 200
        assert http.get("/v1/status", headers={"X-API-Key": TOKEN}).status_code == 200
        assert http.get("/", params={"token": TOKEN}).status_code == 200  # the dashboard link
        assert http.get("/v1/agents", headers={"Authorization": "Bearer no"}).status_code == 401

    async def websocket() -> None:
        url = f"ws://127.0.0.1:{env['PORT']}/ws"
        for options in (
            {"additional_headers": bearer},
            {"subprotocols": ["amelia.v1", f"bearer.{TOKEN}"]},
        ):
            async with websockets.connect(url, open_timeout=60, **options) as ws:
                await ws.send(json.dumps({"type": "subscribe", "id": "s1", "since": "beginning"}))
                await asyncio.wait_for(ws.recv(), timeout=60)

    asyncio.run(websocket())
    create_agent(env, "keeper")
    assert publish(env, "runs/with-a-token") > 0
    ran = amelia(env, "run", "keeper", f"please repeat {TOKEN}", timeout=DEADLINE)  # CLI: gRPC
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert '"level": "debug"' in (Path(env["AMELIA_DATA_DIR"]) / "logs" / "gateway.log").read_text()
    assert_no_log_holds_a_secret(env)


def test_status_finds_the_mesh_from_any_directory(
    running_mesh: dict[str, str], tmp_path: Path
) -> None:
    env = running_mesh
    assert serving(env)
    # Elsewhere, without AMELIA_DATA_DIR: the services are asked how NATS and PostgreSQL are.
    elsewhere = {k: v for k, v in env.items() if k != "AMELIA_DATA_DIR"}
    status = amelia(elsewhere, "status", cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "UNKNOWN" not in status.stdout and "reported by the services" in status.stdout
    # Below the folder holding the default data dir: found the way git finds `.git`.
    home = tmp_path / "project"
    (home / "sub" / "deeper").mkdir(parents=True)
    (home / ".amelia").symlink_to(env["AMELIA_DATA_DIR"])
    found = amelia(elsewhere, "status", cwd=home / "sub" / "deeper")
    assert found.returncode == 0, found.stdout + found.stderr
    assert "reported by the services" not in found.stdout and "pgvector" in found.stdout


def test_killed_nats_and_postgres_come_back_on_their_data(running_mesh: dict[str, str]) -> None:
    env = running_mesh
    reader = Reader(state_file(Path(env["AMELIA_DATA_DIR"])))
    reader.start()
    try:
        sequence = publish(env, "runs/before-the-kill")
        create_agent(env, "survivor")
        services = {name: mesh_pids(env)[name] for name in ("events", "rag", "agents", "gateway")}

        nats_seconds = kill_and_wait_back(env, "nats")
        assert event_subject(env, sequence) == "runs/before-the-kill"  # same store
        assert publish(env, "runs/after-nats") > sequence

        postgres_seconds = kill_and_wait_back(env, "postgres")
        assert "agents/survivor" in agent_names(env)  # same data directory
        create_agent(env, "after-postgres")

        units = mesh_state(env)["units"]
        print(
            "restarted, then all SERVING, seconds after SIGKILL: "
            f"nats {nats_seconds[0]:.1f} / {nats_seconds[1]:.1f}, "
            f"postgres {postgres_seconds[0]:.1f} / {postgres_seconds[1]:.1f}; crashes counted: "
            f"nats {units['nats']['crashes_in_window']}, "
            f"postgres {units['postgres']['crashes_in_window']} "
            f"(last: {units['postgres']['last_exit'][:300]!r})"
        )
        assert units["nats"]["restarts"] >= 1 and units["postgres"]["restarts"] >= 1
        assert {name: mesh_pids(env)[name] for name in services} == services  # untouched
        nats_pid_file = Path(env["AMELIA_DATA_DIR"]) / "nats" / "nats-server.pid"
        assert mesh_pids(env)["nats"] == int(nats_pid_file.read_text())
    finally:
        reader.done.set()
        reader.join()
    assert reader.reads > 100 and reader.torn == []


def test_a_service_killed_five_times_in_a_minute_is_failed_alone(
    running_mesh: dict[str, str],
) -> None:
    """Each new gateway is killed as soon as it exists: five crashes well within the window."""
    env = running_mesh
    others = {name: pid for name, pid in mesh_pids(env).items() if name != "gateway"}
    pid = None
    for _ in range(5):
        pid = next_pid(env, "gateway", pid)
        os.kill(pid, signal.SIGKILL)
    gateway = wait_for(
        lambda: (u := mesh_state(env)["units"]["gateway"])["state"] == "FAILED" and u,
        "the gateway to be given up on",
    )
    assert gateway["last_exit"] == "killed by SIGKILL" and gateway["pid"] is None
    time.sleep(2)
    assert mesh_pids(env) == others  # everything else still runs, untouched
    status = amelia(env, "status")
    assert status.returncode == 1
    line = next(line for line in status.stdout.splitlines() if "gateway" in line)
    assert "FAILED" in line and "killed by SIGKILL" in line
    assert "gateway.log" in status.stdout
    for name in ("events", "agents", "rag"):
        assert "SERVING" in next(line for line in status.stdout.splitlines() if name in line)


def test_ctrl_c_stops_services_then_nats_then_postgres(running_mesh: dict[str, str]) -> None:
    """A Ctrl-C on a terminal goes to the whole process group of `amelia up`. (The standalone
    worker is no part of the mesh: stopped first, as its own deployment would be.)"""
    env = running_mesh
    worker = int(env["WORKER_PID"])
    os.kill(worker, signal.SIGTERM)
    wait_for(lambda: not alive(worker), "the standalone worker to stop")
    pids = mesh_pids(env)
    services = [name for name in pids if name not in ("nats", "postgres")]
    assert {"nats", "postgres", "events"} <= set(pids)
    gone_at = ctrl_c_stop_order(env, ["postgres", "nats", *services])
    last_service = max(gone_at[name] for name in services)
    assert last_service <= gone_at["nats"] <= gone_at["postgres"], gone_at
    up_log = (Path(env["AMELIA_DATA_DIR"]) / "logs" / "amelia-up.log").read_text()
    assert up_log.rstrip().endswith("stopped.")
    assert not state_file(Path(env["AMELIA_DATA_DIR"])).exists()
    assert amelia(env, "status").returncode == 1
    assert_no_log_holds_a_secret(env)  # restarts, crashes and the stop included


def test_up_again_finds_its_data_and_down_stops_it(running_mesh: dict[str, str]) -> None:
    """After the Ctrl-C above: detached on the same data directory, the events and agents the
    tests above stored are there; `amelia down` stops every part."""
    env = running_mesh
    started = amelia(env, "up", "--detach", timeout=DEADLINE + 120)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "amelia down" in started.stdout
    try:
        assert serving(env)
        assert {"agents/survivor", "agents/after-postgres"} <= agent_names(env)
        assert events_of(env, "runs/after-nats"), "the event log was lost"
        again = amelia(env, "up", "--detach")
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        pids = mesh_pids(env)
        stopped = amelia(env, "down", timeout=120)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout
    for name, pid in pids.items():
        assert not alive(pid), f"{name} (pid {pid}) left running"
    assert amelia(env, "status").returncode == 1
    assert "not running" in amelia(env, "down").stdout
