"""A real `amelia up` for the dashboard tests: embedded PostgreSQL + NATS and the four services
as child processes of the supervisor, on free ports, in a scratch data directory, with an API
token. The gateway is its own process, so a test can kill it and watch the supervisor start a
new one (a real gateway restart)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from amelia_common.embedded import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOKEN = "dash-test-token"


class Mesh:
    """One `amelia up` subprocess."""

    def __init__(self, root: Path, token: str = TOKEN) -> None:
        self.root = root
        self.token = token
        names = (
            "EVENTS_GRPC_PORT",
            "AGENTS_GRPC_PORT",
            "RAG_GRPC_PORT",
            "PORT",
            "EMBEDDED_NATS_PORT",
        )
        ports = {name: str(free_port()) for name in names}
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
        python_path = [str(HERE), env.get("PYTHONPATH", "")]
        env |= ports | {
            "AMELIA_DATA_DIR": str(root / "data"),
            "EVENTS_ADDRESS": f"127.0.0.1:{ports['EVENTS_GRPC_PORT']}",
            "AGENTS_ADDRESS": f"127.0.0.1:{ports['AGENTS_GRPC_PORT']}",
            "RAG_ADDRESS": f"127.0.0.1:{ports['RAG_GRPC_PORT']}",
            "AMELIA_API_TOKEN": token,
            "AGENT_WORKERS": "2",
            "AGENT_WORKFLOW_MODULES": "dashboard_workflows",
            "PYTHONPATH": os.pathsep.join(p for p in python_path if p),
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            # Small chunks so a short test document still makes several passages.
            "CHUNK_SIZE": "300",
            "CHUNK_OVERLAP": "50",
            # Small embedding batches (the indexer takes 4 at once), so a document of a few
            # dozen passages shows indexing progress between them.
            "EMBEDDING_BATCH_SIZE": "4",
            # Repositories the develop workflow may work in (test_dashboard_develop.py).
            "CODE_ALLOWED_ROOTS": str(root / "code"),
            # Prices for the offline models, so the steps timeline shows each node's cost.
            "MODEL_PRICES": json.dumps({"offline:*": [1000, 2000]}),
            # The screens are driven with `offline:` models: no llama-server loading a model
            # (and holding the fixed LOCAL_MODEL_PORT) for the whole folder.
            "LOCAL_MODEL": "off",
        }
        self.env = env
        self.port = int(ports["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "up.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 300) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amelia_cli", "up"],
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"amelia up exited:\n{self.logs()}")
            try:
                last = self.get("/v1/status", timeout=5)
                if last.get("status") == "SERVING":
                    return
            except (httpx.HTTPError, ValueError) as exc:
                last = repr(exc)
            time.sleep(1)
        self.stop()
        raise AssertionError(f"mesh not SERVING after {timeout}s: {last}\n{self.logs()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def logs(self, lines: int = 40) -> str:
        parts = []
        for path in [self.log_path, *sorted((self.root / "data" / "logs").glob("*.log"))]:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- the gateway process -----------------------------------------------------------------

    def gateway_pid(self) -> int:
        state = json.loads((self.root / "data" / "run" / "mesh.json").read_text())
        return int(state["services"]["gateway"])

    def kill_gateway(self, sig: int = signal.SIGKILL) -> int:
        pid = self.gateway_pid()
        os.kill(pid, sig)
        return pid

    def wait_gateway_restarted(self, old_pid: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.gateway_pid() != old_pid and self.get("/healthz", timeout=2):
                    return
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"the gateway did not come back:\n{self.logs()}")

    # -- HTTP --------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        response = httpx.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )
        response.raise_for_status()
        return response.json()

    def get(self, path: str, timeout: float = 30) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, timeout: float = 30) -> Any:
        return self.request("POST", path, body, timeout=timeout)
