"""The local model server: llama.cpp (the `xllamacpp` wheel) in a child process on 127.0.0.1.

`EmbeddedLlama` is run like `EmbeddedNats`: the server lives under the data directory
(`<data>/llama/llama-server.log`, `llama-server.pid`), `start()` starts it (or reuses the one
running there with the same model) and waits until `/health` answers, `stop()` stops it. It
speaks OpenAI's chat completions at `base_url` (`/v1`), which is what `local:` models talk to.

The child is `python -m amelia_common.llama_server serve …`: xllamacpp's `Server` loads the GGUF
and runs llama.cpp's own HTTP server (continuous batching over `slots` parallel requests, prompt
cache, JSON-schema constrained output, `/slots` and `/metrics`). It generates on `threads` CPU
threads (default 1: on a 2-core machine more threads fight the mesh and get slower).
`watch_parent=True` makes the child exit when the process that started it dies (the test session
uses it so a killed pytest does not leave a model in memory).

    python -m amelia_common.llama_server      # run it in the foreground with the settings
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amelia_common import local_model
from amelia_common.embedded import (
    EmbeddedStartError,
    _StopAtExit,
    port_is_free,
    running_pid,
    stop_process,
)
from amelia_common.logging import get_logger
from amelia_common.settings import LOCAL_MODEL_OFF, Settings, get_settings

log = get_logger("amelia.llama")

# SIGTERM: the server drops its requests and exits at once (llama.cpp needs no flush).
LLAMA_STOP = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET `url` and decode its JSON body; raises OSError (URLError) when it does not answer."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when the llama.cpp server at `url` (no `/v1`) has its model loaded and answers."""
    try:
        return bool(get_json(f"{url}/health", timeout).get("status") == "ok")
    except (OSError, ValueError, AttributeError):
        return False


def served_models(url: str, timeout: float = 2.0) -> list[str]:
    """The names the server at `url` (no `/v1`) answers to (its model's id and aliases)."""
    try:
        data = get_json(f"{url}/v1/models", timeout).get("data") or []
    except (OSError, ValueError, AttributeError):
        return []
    names: list[str] = []
    for model in data:
        names += [str(model.get("id", "")), *map(str, model.get("aliases") or [])]
    return list(dict.fromkeys(filter(None, names)))


def embedded_wanted(settings: Settings) -> bool:
    """Whether `amelia up` should run the local model server: the default model is a `local:`
    one, LOCAL_MODEL is not off and no LOCAL_MODEL_URL points at a server run elsewhere (with a
    provider key set, DEFAULT_MODEL resolves to that provider and nothing is started)."""
    return (
        settings.LOCAL_MODEL != LOCAL_MODEL_OFF
        and not settings.LOCAL_MODEL_URL
        and settings.DEFAULT_MODEL.startswith("local:")
    )


@dataclass
class EmbeddedLlama(_StopAtExit):
    """llama.cpp serving `model` (a GGUF) on 127.0.0.1:`port`, its log and pid under `root`."""

    root: Path
    port: int
    model: Path
    alias: str
    threads: int = 1
    context: int = 8192
    slots: int = 2
    watch_parent: bool = False
    started_here: bool = False
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stop_at_exit: bool = field(default=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EmbeddedLlama:
        """The server `LOCAL_MODEL` asks for; raises `LocalModelError` when its file is missing
        (or LOCAL_MODEL is off)."""
        model = local_model.resolve(settings)
        if model is None:
            raise local_model.LocalModelError("LOCAL_MODEL=off: no local model server")
        values: dict[str, Any] = {
            "root": settings.data_dir,
            "port": settings.LOCAL_MODEL_PORT,
            "model": model,
            "alias": settings.LOCAL_MODEL,
            "threads": settings.LOCAL_MODEL_THREADS,
            "context": settings.LOCAL_MODEL_CONTEXT,
            "slots": settings.LOCAL_MODEL_SLOTS,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What OpenAI-compatible clients use (`LOCAL_MODEL_URL`)."""
        return f"{self.url}/v1"

    @property
    def folder(self) -> Path:
        return self.root / "llama"

    @property
    def pid_file(self) -> Path:
        return self.folder / "llama-server.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "llama-server.log"

    def pid(self) -> int | None:
        """The server's pid, while it runs."""
        if self._process is not None and self._process.poll() is not None:
            self._process = None  # ours, and dead: reaped now
        return running_pid(self.pid_file)

    def healthy(self) -> bool:
        return healthy(self.url)

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "amelia_common.llama_server",
            "serve",
            "--model",
            str(self.model),
            "--alias",
            self.alias,
            "--port",
            str(self.port),
            "--threads",
            str(self.threads),
            "--context",
            str(self.context),
            "--slots",
            str(self.slots),
            "--pid-file",
            str(self.pid_file),
        ]
        if self.watch_parent:
            cmd += ["--parent-pid", str(os.getpid())]
        return cmd

    def start(self, timeout: float = 120.0) -> str:
        """Start the server (or reuse the one running here with the same model); returns its
        OpenAI base URL once the model is loaded."""
        self.folder.mkdir(parents=True, exist_ok=True)
        running = self.pid()
        if running is not None and self.healthy():
            if self.alias in served_models(self.url):
                log.info("reusing embedded llama.cpp server", url=self.base_url, pid=running)
                return self.base_url
            log.info("restarting embedded llama.cpp server for another model", alias=self.alias)
            self.stop()
        if not port_is_free(self.port):
            raise EmbeddedStartError(
                f"port {self.port} is in use by another process, so the local model server "
                "cannot start. Set LOCAL_MODEL_PORT to pick another port, LOCAL_MODEL_URL to "
                "use a server already running, or LOCAL_MODEL=off."
            )
        ready_from = self._log_size()
        started = time.monotonic()
        with self.log_file.open("ab") as log_out:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on a terminal reaches only its supervisor
            )
        self._note_started_here()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedStartError(
                    f"the local model server exited with code {self._process.returncode} "
                    f"(log: {self.log_file}): {self._log_tail(ready_from)}"
                )
            if self.healthy():
                log.info(
                    "embedded llama.cpp server ready",
                    url=self.base_url,
                    model=str(self.model),
                    seconds=round(time.monotonic() - started, 2),
                )
                return self.base_url
            time.sleep(0.1)
        self.stop()
        raise EmbeddedStartError(
            f"the local model server did not load {self.model} in {timeout:g}s: "
            f"{self._log_tail(ready_from)}"
        )

    def stop(self) -> None:
        """Stop the server running here, whoever started it (SIGTERM, then SIGKILL)."""
        proc, self._process = self._process, None
        pid = self.pid()
        self.started_here = False
        if pid is not None:
            stop_process(pid, LLAMA_STOP, proc)
        if proc is not None and proc.poll() is None:  # started here, still loading its model
            stop_process(proc.pid, LLAMA_STOP, proc)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_tail(self, offset: int = 0, lines: int = 6) -> str:
        """llama.cpp's error lines since `offset` (else the last lines): why it stopped."""
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        all_lines = text.splitlines()
        errors = [line for line in all_lines if " E " in line or line.startswith("amelia:")]
        return "\n".join((errors or all_lines)[-lines:])


# The child process ---------------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def serve(args: argparse.Namespace) -> int:
    """Load the model and serve until SIGTERM/SIGINT (runs in the child process)."""
    import xllamacpp

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    params = xllamacpp.CommonParams()
    params.model.path = str(args.model)
    # `local:<alias>` and `local:<path of the file>` both name this model.
    params.model_alias = {args.alias, str(Path(args.model).resolve())}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_ctx = args.context
    params.n_parallel = args.slots
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.ui = False
    # Only pages served by the server itself may read its answers from a browser.
    params.cors_origins = f"http://127.0.0.1:{args.port}"
    started = time.perf_counter()
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:  # llama.cpp logged why (its "E" lines above)
        print(f"amelia: llama.cpp could not serve {args.model}: {exc}", flush=True)
        return 1
    pid_file = Path(args.pid_file) if args.pid_file else None
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    print(
        f"amelia: serving {args.model} as {args.alias!r} at {server.listening_address} "
        f"(loaded in {time.perf_counter() - started:.2f}s, {args.threads} thread(s), "
        f"{args.slots} slots, context {args.context})",
        flush=True,
    )
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    print("amelia: stopping the local model server", flush=True)
    if pid_file is not None:
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    sys.stdout.flush()
    os._exit(0)  # llama.cpp's threads need no orderly teardown; the OS frees the model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amelia_common.llama_server")
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("serve", help="serve one GGUF (what EmbeddedLlama runs)")
    child.add_argument("--model", required=True)
    child.add_argument("--alias", required=True)
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--threads", type=int, default=1)
    child.add_argument("--context", type=int, default=8192)
    child.add_argument("--slots", type=int, default=2)
    child.add_argument("--pid-file", default="")
    child.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    # No command: the settings' server in the foreground, until Ctrl-C.
    settings = get_settings()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        server = EmbeddedLlama.from_settings(settings)
        print(f"local model server: {server.start()} (log: {server.log_file})", flush=True)
    except (local_model.LocalModelError, EmbeddedStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
