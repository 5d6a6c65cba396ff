"""Loading the local model keeps the service's log JSON lines (QA F6e).

rag.log is the rag process's stderr, documented as one JSON object a line; transformers drew
its `Loading weights: …|████|` progress bar there with tqdm when the model loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# What `amelia-rag` does before it serves: JSON logging, then the model, then a log line.
LOADER = """
import asyncio
from amelia_common.logging import configure_logging, get_logger
from amelia_common.settings import Settings
from amelia_rag.embeddings import LocalEmbedder

settings = Settings(LOG_FORMAT="json")
configure_logging(settings, "rag")
embedder = asyncio.run(LocalEmbedder.load(settings))
get_logger("amelia.rag").info("model loaded", dimension=embedder.dimension)
"""


def test_loading_the_model_writes_only_json_lines() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "LOG_FORMAT")
    }
    done = subprocess.run(
        [sys.executable, "-c", LOADER],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    # tqdm redraws with carriage returns: a bar is text between them, not only between newlines.
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, f"lines that are not JSON: {not_json[:5]}"
    assert any(json.loads(line).get("event") == "model loaded" for line in lines)
