"""`amelia threads state|history|update|ls` at 80 columns, on the TUI tests' real mesh: what a
thread holds after a chat, its checkpoints newest first, an update the next run starts from."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

from cli_helpers import amelia
from test_cli_output import cli_env
from tui_helpers import DEADLINE, TuiMesh

CHECKPOINT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def _run(mesh: TuiMesh, model: str, thread: str = "", message: str = "hi") -> dict[str, Any]:
    """A `workflows/chat` run of `model` made through the gateway, once it ended."""
    run = {"workflow": "workflows/chat", "thread": thread, "input": {"message": message}}
    run["input"]["model"] = model
    created = await mesh.http.post("/v1/runs", json={"run": run})
    assert created.status_code == 200, created.text
    name = created.json()["run"]["name"]
    async with asyncio.timeout(DEADLINE):
        while True:
            body: dict[str, Any] = (await mesh.http.get(f"/v1/{name}")).json()["run"]
            if body["status"] not in ("RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING"):
                return body
            await asyncio.sleep(0.05)


async def _chat(mesh: TuiMesh, message: str, thread: str = "") -> dict[str, Any]:
    """A completed `workflows/chat` run (offline:echo) made through the gateway."""
    body = await _run(mesh, "offline:echo", thread, message)
    assert body["status"] == "RUN_STATUS_COMPLETED", body
    return body


async def test_threads_state_history_and_update(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    word = f"heron{uuid.uuid4().hex[:6]}"
    run = await _chat(tui_mesh, f"the {word} waits by the weir")
    thread = run["thread"]

    code, shown = await asyncio.to_thread(amelia, env, "threads", "state", thread)
    assert code == 0, shown
    lines = shown.splitlines()
    assert all(len(line) <= 80 for line in lines), shown
    assert lines[0] == thread
    fields = {line[:11].strip(): line[11:].strip() for line in lines[1:6]}
    assert CHECKPOINT.fullmatch(fields["checkpoint"]), shown
    assert fields["written by"] == run["name"], shown
    assert fields["next"] == "- (the graph ended)", shown
    assert f'"content": "the {word} waits by the weir"' in shown, shown

    # The id alone (no threads/ prefix) names the thread too.
    code, history = await asyncio.to_thread(
        amelia, env, "threads", "history", thread.removeprefix("threads/")
    )
    assert code == 0, history
    rows = [line for line in history.splitlines() if CHECKPOINT.match(line)]
    assert all(len(line) <= 80 for line in history.splitlines()), history
    assert rows[0].split()[0] == fields["checkpoint"], history  # newest first, whole
    assert [row.split()[2] for row in rows][-1] == "input", history
    assert "respond" in " ".join(rows), history  # a checkpoint whose next node is respond
    # Cut at --limit, it says so, and how to see the rest (QA s20: it stopped silently).
    code, newest = await asyncio.to_thread(
        amelia, env, "threads", "history", thread, "--limit", "2"
    )
    assert code == 0, newest
    assert (
        f"the newest 2 shown; older ones: --limit N, or --before {rows[1].split()[0]}"
        in " ".join(newest.split())
    ), newest

    told = {"messages": [{"role": "user", "content": f"call the {word} Ada"}]}
    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "update", thread, json.dumps(told), "--as-node", "respond"
    )
    assert code == 0, shown
    assert "a state update" in shown and f"call the {word} Ada" in shown, shown
    code, updates = await asyncio.to_thread(
        amelia, env, "threads", "history", thread, "--metadata", "source=update"
    )
    assert code == 0 and len([x for x in updates.splitlines() if CHECKPOINT.match(x)]) == 1, updates

    # The next run starts from the updated state: the echo model answers the last message,
    # and the thread now holds the update between the two turns.
    await _chat(tui_mesh, "and now?", thread=thread)
    code, shown = await asyncio.to_thread(amelia, env, "threads", "state", thread, "--json")
    assert code == 0, shown
    contents = [m["content"] for m in json.loads(shown)["values"]["messages"]]
    assert contents[2:] == [f"call the {word} Ada", "and now?", "and now?"], contents

    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "state", thread, "--checkpoint", str(uuid.uuid4())
    )
    assert code == 1 and "NOT_FOUND:" in shown, shown
    code, shown = await asyncio.to_thread(amelia, env, "threads", "update", thread, "[1]")
    assert code == 2 and "must be a JSON object ({...}), not an array" in shown, shown


async def test_threads_ls_by_metadata_and_status(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    team = f"team-{uuid.uuid4().hex[:8]}"
    names = []
    for _ in range(2):
        made = await tui_mesh.http.post(
            "/v1/threads", json={"thread": {"metadata": {"team": team}}}
        )
        assert made.status_code == 200, made.text
        names.append(made.json()["thread"]["name"])
    failed = await _run(tui_mesh, "offline:fail:the model broke", names[1])
    assert failed["status"] == "RUN_STATUS_FAILED", failed

    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "ls", "--metadata", f"team={team}"
    )
    assert code == 0, shown
    assert all(len(line) <= 80 for line in shown.splitlines()), shown
    assert shown.split()[:4] == ["name", "status", "runs", "updated"], shown
    rows = [line for line in shown.splitlines() if line.startswith("threads/")]
    # Most recently active first: the thread with the failed run, then the empty one.
    assert [row.split()[:3] for row in rows] == [[names[1], "error", "1"], [names[0], "idle", "0"]]

    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "ls", "--metadata", f"team={team}", "--status", "error"
    )
    assert code == 0, shown
    assert [line.split()[0] for line in shown.splitlines() if "threads/" in line] == [names[1]]
    # The count a paging UI shows (LangGraph's POST /threads/count), over HTTP.
    counted = await tui_mesh.http.post(
        "/v1/threads:count", json={"metadataFilter": {"team": team}, "status": "error"}
    )
    assert counted.status_code == 200 and counted.json() == {"count": "1"}, counted.text
    counted = await tui_mesh.http.get("/v1/threads:count", params={"metadataFilter[team]": team})
    assert counted.status_code == 200 and counted.json() == {"count": "2"}, counted.text
    refused = await tui_mesh.http.get("/v1/threads:count", params={"status": "asleep"})
    assert refused.status_code == 400, refused.text
    assert "is not one of: idle, busy, interrupted, error" in refused.json()["message"]
    # Oldest first, then newest first (LangGraph's sort_by created_at, sort_order).
    for sort, expected in (("create_time", names), ("create_time desc", names[::-1])):
        code, shown = await asyncio.to_thread(
            amelia, env, "threads", "ls", "--metadata", f"team={team}", "--sort", sort
        )
        assert code == 0, shown
        assert [line.split()[0] for line in shown.splitlines() if "threads/" in line] == expected
    code, shown = await asyncio.to_thread(amelia, env, "threads", "ls", "--sort", "status")
    assert code == 1, shown
    assert (
        "INVALID_ARGUMENT: --sort must be one of: create_time, create_time desc, update_time, "
        "update_time desc"
    ) in " ".join(shown.split()), shown
    code, shown = await asyncio.to_thread(amelia, env, "threads", "ls", "--status", "asleep")
    assert code == 1, shown
    assert "INVALID_ARGUMENT: --status 'asleep' is not one of: idle, busy, interrupted, error" in (
        " ".join(shown.split())
    ), shown
    code, shown = await asyncio.to_thread(amelia, env, "threads", "ls", "--metadata", "team")
    assert code == 2 and "not key=value" in shown, shown
