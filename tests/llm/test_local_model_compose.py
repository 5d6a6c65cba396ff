"""docker-compose.yml's local model server, checked without Docker (none runs here): the command
of Dockerfile.local-model is run as it is (its model path swapped for the fetched file, a free
port), the compose health check passes against it, and the services' settings in the compose file
reach it under the name and port it serves."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from amelia_common import local_model
from amelia_common.embedded import free_port
from amelia_common.llama_server import healthy
from amelia_common.settings import DEFAULT_LOCAL_MODEL, Settings

ROOT = Path(__file__).parents[2]


def dockerfile_cmd() -> list[str]:
    text = (ROOT / "Dockerfile.local-model").read_text().replace("\\\n", " ")
    match = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "Dockerfile.local-model has no exec-form CMD"
    command: list[str] = json.loads(match.group(1))
    return command


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_the_image_fetches_and_verifies_the_model_it_serves() -> None:
    dockerfile = (ROOT / "Dockerfile.local-model").read_text()
    assert "python -m amelia_common.local_model fetch" in dockerfile
    models = re.search(r"LOCAL_MODEL_DIR=(\S+)", dockerfile)
    assert models is not None
    command = dockerfile_cmd()
    assert option(command, "--model") == f"{models.group(1)}/{local_model.MODEL_FILE}"
    assert option(command, "--alias") == DEFAULT_LOCAL_MODEL
    assert option(command, "--host") == "0.0.0.0"
    service = compose()["services"]["local-model"]
    assert service["build"]["dockerfile"] == "Dockerfile.local-model"
    assert "ports" not in service  # reachable on the compose network only


def test_the_services_default_to_the_model_the_container_serves() -> None:
    services = compose()["services"]
    port = option(dockerfile_cmd(), "--port")
    for name in ("agents", "gateway"):
        env = {k: v for k, v in services[name]["environment"].items() if k != "<<"}
        assert env["LOCAL_MODEL_URL"] == f"http://local-model:{port}/v1"
        values = {
            k: re.sub(r"\$\{\w+:-(.*)\}", r"\1", str(v))  # compose's defaults, no key set
            for k, v in env.items()
            if k in ("LOCAL_MODEL", "LOCAL_MODEL_URL", "ANTHROPIC_API_KEY", "OPENAI_API_KEY")
        }
        settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
        assert (settings.DEFAULT_MODEL, settings.local_model_url) == (
            f"local:{DEFAULT_LOCAL_MODEL}",
            f"http://local-model:{port}/v1",
        )


def test_the_containers_command_serves_and_passes_its_health_check() -> None:
    model = local_model.model_path(Settings(_env_file=None))  # type: ignore[call-arg]
    if not model.is_file():
        pytest.fail(f"the local model is not at {model}: run 'make install'")
    command = dockerfile_cmd()
    port = free_port()
    command[command.index("--model") + 1] = str(model)
    command[command.index("--port") + 1] = str(port)
    assert command[:3] == ["python", "-m", "amelia_common.llama_server"]
    server = subprocess.Popen(
        [sys.executable, *command[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while not healthy(f"http://127.0.0.1:{port}"):
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "the model server did not load its model"
            time.sleep(0.2)
        check = compose()["services"]["local-model"]["healthcheck"]["test"]
        assert check[0] == "CMD" and check[1] == "python"
        script = check[-1].replace(":8081/", f":{port}/")
        assert subprocess.run([sys.executable, "-c", script], timeout=30).returncode == 0
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(
                {
                    "model": option(command, "--alias"),
                    "messages": [{"role": "user", "content": "Say hello."}],
                    "max_tokens": 8,
                    "temperature": 0,
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
        assert reply["choices"][0]["message"]["content"].strip()
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output
    assert "0.0.0.0" in output, output  # where it said it listens
