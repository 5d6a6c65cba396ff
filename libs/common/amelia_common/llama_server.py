"""The local model server: llama.cpp (the `xllamacpp` wheel) in a child process on 127.0.0.1.

`EmbeddedLlama` is run like `EmbeddedNats`: the server lives under the data directory, in a
folder of its port (`<data>/llama/<port>/llama-server.log`, `llama-server.pid`), `start()` starts
it (or reuses the one running there with the same model) and waits until `/health` answers,
`stop()` stops it. It speaks OpenAI's chat completions at `base_url` (`/v1`), which is what
`local:` models talk to.

A server's files are its own: two servers on two ports (`amelia up`'s and one run alone) share
no pid file nor log. And a pid is signalled only when it is the child this object started, or a
process whose command line is the server of this very pid file (one started by an `amelia up`
that crashed, adopted by the next): never a pid merely read from a file, which may be another
server's or, after a reboot, anyone's. Once started or adopted, the server is known by its pid,
so a pid file removed behind its back does not make it look gone (QA s27 finding 1: a standalone
server sharing the pid file killed the mesh's, whose supervisor then gave up).
`amelia up` supervises it like PostgreSQL and NATS when `embedded_wanted()`; `local_model_report()`
says how it is (or why none runs) for `amelia status` and the gateway's `/v1/status`.

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
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from amelia_common import local_model
from amelia_common.embedded import (
    EmbeddedServer,
    EmbeddedStartError,
    port_is_free,
    process_alive,
    running_pid,
    stop_process,
)
from amelia_common.logging import get_logger
from amelia_common.running_mesh import read_state
from amelia_common.settings import LOCAL_MODEL_OFF, Settings, get_settings

log = get_logger("amelia.llama")

# SIGTERM: the server drops its requests and exits at once (llama.cpp needs no flush).
LLAMA_STOP = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))
# Under the data directory. The pid file's first line is the pid; its second, written with it
# once the model is loaded, the server's parameters as JSON (what `amelia status` shows).
FOLDER = "llama"  # then a folder per port: a server's files are its own
PID_FILE = "llama-server.pid"
LOG_FILE = "llama-server.log"


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


def why_not_embedded(settings: Settings) -> str:
    """Why `amelia up` runs no local model server with these settings ("" when it runs one):
    LOCAL_MODEL is off, LOCAL_MODEL_URL points at a server run elsewhere, or the default model
    is not a `local:` one (with a provider key set, DEFAULT_MODEL resolves to that provider)."""
    if settings.LOCAL_MODEL == LOCAL_MODEL_OFF:
        return "LOCAL_MODEL=off"
    if settings.LOCAL_MODEL_URL:
        return "LOCAL_MODEL_URL: a server run elsewhere"
    if not settings.DEFAULT_MODEL.startswith("local:"):
        keys = [
            name
            for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")
            if getattr(settings, name).get_secret_value()
        ]
        because = f" ({' and '.join(keys)} set)" if keys else ""
        return f"not needed: the default model is {settings.DEFAULT_MODEL}{because}"
    return ""


def embedded_wanted(settings: Settings) -> bool:
    """Whether `amelia up` runs the local model server (see `why_not_embedded`)."""
    return not why_not_embedded(settings)


def server_folder(data_dir: Path, port: int) -> Path:
    """Where the server on `port` keeps its pid file and log, under the data directory."""
    return data_dir / FOLDER / str(port)


def command_line(pid: int) -> list[str] | None:
    """The arguments `pid` runs with ([] when it is gone; None where /proc cannot tell)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return [] if Path("/proc/self").exists() else None
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def supervisor_hint(data_dir: Path, url: str) -> str:
    """What to do about the local model server at `url` (…/v1) not answering, as the `amelia
    up` running for `data_dir` (its mesh.json) knows it: given up on (it kept failing: run
    `amelia up` again, which asks the running one to start it again) or being restarted; ""
    when no `amelia up` supervises a server at that URL (QA s27 finding 5: a run said only
    "cannot reach …: Connection error." once the supervisor had given up)."""
    state = read_state(data_dir)
    served = str(((state or {}).get("local_model") or {}).get("url", ""))
    if not state or not served or served.rstrip("/") != url.rstrip("/"):
        return ""
    unit = (state.get("units") or {}).get("local-model") or {}
    if unit.get("state") == "FAILED":
        return (
            f"`amelia up` (pid {state.get('pid')}) stopped restarting the local model server, "
            f"which kept failing (last: {unit.get('last_exit') or 'unknown'}; log: "
            f"{unit.get('log') or '-'}): run `amelia up` again, in another terminal, to have "
            "it start the server again"
        )
    if unit.get("state") in ("STARTING", "RESTARTING"):
        return "`amelia up` is starting the local model server again (see `amelia status`)"
    return ""


def read_pid_file(pid_file: Path) -> dict[str, Any]:
    """The parameters the server wrote beside its pid ({} when there are none)."""
    try:
        lines = pid_file.read_text().splitlines()
        info = json.loads(lines[1]) if len(lines) > 1 else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


@dataclass(frozen=True)
class LocalModelReport:
    """How the local model server is, for `amelia status` and the gateway's `/v1/status`.

    `status` is SERVING, STARTING (loading its model), UNREACHABLE, or OFF (none is meant to
    run; `why` says why). An embedded server also tells its pid, threads and log.
    """

    status: str
    url: str = ""
    why: str = ""
    model: str = ""
    embedded: bool = False
    threads: int | None = None
    slots: int | None = None
    pid: int | None = None
    log: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def detail(self) -> str:
        """One line for a terminal: model, threads, slots, pid, log (or why none runs)."""
        parts = [self.why, self.model]
        if self.threads is not None:
            parts.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        if self.slots is not None:
            parts.append(f"{self.slots} slot{'s' if self.slots != 1 else ''}")
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.log:
            parts.append(f"log: {self.log}")
        return ", ".join(part for part in parts if part)


def _short_name(names: list[str]) -> str:
    """The model's alias when it has one, else its file name."""
    for name in names:
        if "/" not in name:
            return name
    return Path(names[0]).name if names else ""


def probe(url: str, timeout: float = 2.0) -> tuple[str, list[str], int | None]:
    """Ask the OpenAI-compatible server at `url` (…/v1): its status (SERVING, STARTING while
    llama.cpp loads its model, UNREACHABLE), the names it serves and its slots (llama.cpp)."""
    root = url.rstrip("/").removesuffix("/v1")
    names = served_models(root, timeout)
    if not names:
        try:
            get_json(f"{root}/health", timeout)
        except urllib.error.HTTPError as exc:
            return ("STARTING" if exc.code == 503 else "UNREACHABLE"), [], None
        except (OSError, ValueError):
            pass
        return "UNREACHABLE", [], None
    try:
        slots = get_json(f"{root}/props", timeout).get("total_slots")
    except (OSError, ValueError, AttributeError):
        slots = None  # not llama.cpp (Ollama, vLLM): no props
    return "SERVING", names, slots if isinstance(slots, int) else None


def local_model_report(settings: Settings, timeout: float = 2.0) -> LocalModelReport:
    """The local model server these settings use: the embedded one under the data directory,
    the one LOCAL_MODEL_URL names, or OFF with the reason none runs."""
    why = why_not_embedded(settings)
    if why and not settings.LOCAL_MODEL_URL:
        return LocalModelReport("OFF", why=why)
    embedded_in = None if settings.LOCAL_MODEL_URL else settings.data_dir
    return server_report(settings.local_model_url, embedded_in, timeout)


def server_report(url: str, data_dir: Path | None, timeout: float = 2.0) -> LocalModelReport:
    """How the server at `url` (…/v1) is: the embedded one of `data_dir` (with its pid,
    threads and log), or one run elsewhere (`data_dir` None)."""
    status, names, slots = probe(url, timeout)
    if data_dir is None:
        host = urllib.parse.urlsplit(url).netloc
        return LocalModelReport(
            status, url, f"run elsewhere ({host})", _short_name(names), slots=slots
        )
    folder = server_folder(data_dir, urllib.parse.urlsplit(url).port or 0)
    pid = running_pid(folder / PID_FILE)
    info = read_pid_file(folder / PID_FILE) if pid is not None else {}
    threads = info.get("threads")
    return LocalModelReport(
        status,
        url,
        model=_short_name(names) or str(info.get("alias", "")),
        embedded=True,
        threads=threads if isinstance(threads, int) else None,
        slots=slots,
        pid=pid,
        log=str(folder / LOG_FILE),
    )


@dataclass
class EmbeddedLlama(EmbeddedServer):
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
    # A server of this pid file found running (not our child), known by its pid from then on.
    _adopted: int | None = field(default=None, repr=False)
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
        return server_folder(self.root, self.port)

    @property
    def pid_file(self) -> Path:
        return self.folder / PID_FILE

    @property
    def log_file(self) -> Path:
        return self.folder / LOG_FILE

    def pid(self) -> int | None:
        """The server's pid, while it runs: the child this object started (loading its model
        or serving, whatever its pid file says), else the server of this pid file, adopted."""
        if self._process is not None:
            if self._process.poll() is None:
                return self._process.pid
            self._process = None  # ours, and dead: reaped now
        if self._adopted is not None and self._serves_here(self._adopted):
            return self._adopted
        self._adopted = None
        recorded = running_pid(self.pid_file)
        if recorded is not None and self._serves_here(recorded):
            self._adopted = recorded
        return self._adopted

    def _serves_here(self, pid: int) -> bool:
        """Whether `pid` is a server of this pid file (its command line says so), not a
        process that took a recorded pid over, nor a server of another port or data dir."""
        if not process_alive(pid):
            return False
        args = command_line(pid)
        if args is None:
            return True  # no /proc (macOS): the pid file, of this port's folder, is all we know
        return (
            "amelia_common.llama_server" in args
            and "--pid-file" in args[:-1]
            and args[args.index("--pid-file") + 1] == str(self.pid_file.absolute())
        )

    def _loaded(self, process: subprocess.Popen[bytes]) -> bool:
        """Our child has loaded its model: it wrote its pid file (then `/health` answers)."""
        return running_pid(self.pid_file) == process.pid and self.healthy()

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
            str(self.pid_file.absolute()),
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
            process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on a terminal reaches only its supervisor
            )
        self._process, self._adopted = process, None
        self._note_started_here()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                # Nothing of ours runs: nothing for an exit handler to stop.
                self._process, self.started_here = None, False
                raise EmbeddedStartError(
                    f"the local model server exited with code {process.returncode} "
                    f"(log: {self.log_file}): {self._log_tail(ready_from)}"
                )
            # Its pid file is written once the model is loaded: then it is known to supervisors.
            if self._loaded(process):
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
        """Stop the server this object started or adopted (SIGTERM, then SIGKILL), and remove
        its pid file if it left it; a pid file naming any other process is left alone."""
        pid = self.pid()
        proc, self._process, self._adopted = self._process, None, None
        self.started_here = False
        if pid is not None:
            stop_process(pid, LLAMA_STOP, proc)
        if running_pid(self.pid_file) is None:  # ours (killed before it could), or stale
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
    params.hostnames = [args.host]
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
        info = {
            "alias": args.alias,
            "model": str(args.model),
            "threads": args.threads,
            "slots": args.slots,
            "context": args.context,
        }
        # Whole or not at all: a reader never sees a pid without its parameters.
        partial = pid_file.with_name(f".{pid_file.name}.tmp")
        partial.write_text(f"{os.getpid()}\n{json.dumps(info)}\n")
        os.replace(partial, pid_file)
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
    if pid_file is not None and running_pid(pid_file) == os.getpid():  # still ours
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
    # 127.0.0.1 under `amelia up`; 0.0.0.0 in its docker-compose container (not published).
    child.add_argument("--host", default="127.0.0.1")
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
        running = server.pid()
        if running is not None:
            # Another process's server (`amelia up`'s): neither reused nor stopped by this one.
            raise EmbeddedStartError(
                f"a local model server already runs on port {server.port} (pid {running}, "
                f"log: {server.log_file}), started by another process such as `amelia up`: "
                f"use it (LOCAL_MODEL_URL={server.base_url}) or set LOCAL_MODEL_PORT to run "
                "another"
            )
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
