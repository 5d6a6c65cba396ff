"""The `amelia` commands a user types, against a real mesh: ingest, search, docs, agents, run.

The mesh is the folder's (`running_mesh`, with an API token the commands send; test_supervision
goes on with it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import amelia

pytestmark = pytest.mark.slow

GUIDE = """# Lighthouse keeping

## Lamp maintenance

The keeper trims the wick of the lamp every evening at dusk and polishes the Fresnel lens
with a soft chamois cloth so that the beam carries twenty nautical miles.

## Fog signals

When fog rolls in, the keeper starts the diaphone horn, which sounds two blasts every minute.
"""


def test_ingest_search_and_list_documents(running_mesh: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "lighthouse.md").write_text(GUIDE)
    (folder / "notes.txt").write_text("Shopping list: bread, eggs, and tea for the weekend.\n")
    (folder / "image.png").write_bytes(b"\x89PNG not ingested by a folder walk")

    first = amelia(running_mesh, "ingest", str(folder), timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "lighthouse.md" in first.stdout and "notes.txt" in first.stdout
    assert "image.png" not in first.stdout
    assert first.stdout.count("stored") == 2  # answered once stored; embedded in the background

    again = amelia(running_mesh, "ingest", str(folder / "*.md"), timeout=120)
    assert again.returncode == 0 and "unchanged" in again.stdout

    found = amelia(running_mesh, "search", "how often does the fog horn sound?", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert "Fog signals" in found.stdout and "two blasts" in found.stdout

    listed = amelia(running_mesh, "docs", "ls")
    assert "lighthouse.md" in listed.stdout and "markdown" in listed.stdout
    assert re.search(r"\b(indexing|ready)\b", listed.stdout), listed.stdout
    name = re.search(r"documents/[0-9a-f-]{36}", listed.stdout)
    assert name is not None
    missing = amelia(running_mesh, "docs", "show", "documents/00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_define_an_agent_and_run_it_streaming_tokens(running_mesh: dict[str, str]) -> None:
    created = amelia(
        running_mesh,
        "agents",
        "create",
        "parrot",
        "--model",
        "offline:echo",
        "--prompt",
        "Repeat what you hear.",
    )
    assert created.returncode == 0, created.stderr
    assert "agents/parrot" in amelia(running_mesh, "agents", "ls").stdout

    ran = amelia(running_mesh, "run", "parrot", "polly wants a cracker", timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "polly wants a cracker" in ran.stdout
    assert "completed" in ran.stdout
    run_name = re.search(r"runs/[0-9a-f-]+", ran.stdout)
    assert run_name is not None

    runs = amelia(running_mesh, "runs", "ls", "--agent", "parrot")
    assert run_name.group(0) in runs.stdout and "completed" in runs.stdout

    counter = amelia(
        running_mesh,
        "agents",
        "create",
        "counter",
        "--tool",
        "calculator",
        "--model",
        'offline:tool:calculator:{"expression": "6*7"}',
    )
    assert counter.returncode == 0, counter.stderr
    counted = amelia(running_mesh, "run", "counter", "what is six times seven?", timeout=120)
    assert counted.returncode == 0 and "42" in counted.stdout, counted.stdout + counted.stderr
    bad_tool = amelia(running_mesh, "agents", "create", "x", "--tool", "teleport")
    assert bad_tool.returncode == 1 and "INVALID_ARGUMENT" in bad_tool.stderr

    unknown = amelia(running_mesh, "run", "nobody", "hello")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


def test_an_unreachable_mesh_is_a_clear_error(running_mesh: dict[str, str], tmp_path: Path) -> None:
    # No `amelia up` runs for this data directory, so the CLI dials RAG_ADDRESS (a running
    # mesh's mesh.json would come first: README, "finds the mesh").
    env = running_mesh | {"AMELIA_DATA_DIR": str(tmp_path), "RAG_ADDRESS": "127.0.0.1:9"}
    result = amelia(env, "search", "anything")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr and "amelia status" in result.stderr


def test_run_code_in_the_current_repository(running_mesh: dict[str, str]) -> None:
    repo = Path(running_mesh["CODE_ALLOWED_ROOTS"]) / "project"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README.md").write_text("project\n")
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)

    ran = amelia(running_mesh, "run", "code", "add a note", cwd=repo, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "wrote NOTES.md for: add a note" in ran.stdout
    assert not (repo / "NOTES.md").exists()  # the work happened in a worktree, not in place

    outside = amelia(running_mesh, "run", "code", "x", "--repo", "/usr")
    assert outside.returncode == 1 and "INVALID_ARGUMENT" in outside.stderr
