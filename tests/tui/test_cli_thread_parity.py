"""What the API offers on threads and runs, from `amelia` at an 80-column terminal (session 27
added it to the API only): a thread created with an id of your choosing (`threads create --id
--if-exists`), its metadata changed (`threads update --metadata/--unset`), a thread copied with
its state (`threads copy`), an ended run deleted and a paused one refused (`runs rm`), and a
reply cut at max_tokens said while the run streams — on the TUI tests' real mesh."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from cli_helpers import amelia
from test_cli_output import cli_env
from test_cli_stranger import _shown, paused_plan
from test_cli_threads import _chat
from tui_helpers import TuiMesh

from amelia_cli.tui.eventline import describe


def _fits(shown: str) -> None:
    assert all(len(line) <= 80 for line in shown.splitlines()), shown


def _metadata_of(shown: str) -> dict[str, Any]:
    """The metadata a `threads create|update` printed (the JSON after its `metadata` line)."""
    lines = shown.splitlines()
    found: dict[str, Any] = json.loads("\n".join(lines[lines.index("metadata") + 1 :]))
    return found


async def _thread(mesh: TuiMesh, name: str) -> dict[str, Any]:
    got = await mesh.http.get(f"/v1/{name}")
    assert got.status_code == 200, got.text
    thread: dict[str, Any] = got.json()["thread"]
    return thread


def _said(shown: str) -> str:
    return " ".join(shown.split())


async def test_threads_create_with_its_own_id_once(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    tid = str(uuid.uuid4())
    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "create", "--id", tid, "--metadata", "team=herons"
    )
    assert code == 0, shown
    _fits(shown)
    assert shown.splitlines()[0] == f"threads/{tid}", shown
    assert _metadata_of(shown) == {"team": "herons"}, shown

    # The same id again: refused in the command's words, in one message…
    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "create", "--id", tid, "--metadata", "team=otters"
    )
    assert code == 1, shown
    assert _said(shown) == (
        f'ALREADY_EXISTS: threads/{tid} already exists; --if-exists "do_nothing" returns it as '
        "it is"
    ), shown
    # …or, with --if-exists do_nothing, that thread as it is (its metadata untouched).
    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "create", f"--id=threads/{tid}", "--if-exists", "do_nothing"
    )
    assert code == 0 and shown.splitlines()[0] == f"threads/{tid}", shown
    assert _metadata_of(shown) == {"team": "herons"}, shown
    assert (await _thread(tui_mesh, f"threads/{tid}"))["metadata"] == {"team": "herons"}

    code, shown = await asyncio.to_thread(amelia, env, "threads", "create", "--id", "heron-1")
    assert code == 1 and _said(shown).startswith("INVALID_ARGUMENT: --id 'heron-1' must be a UUID")
    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "create", "--id", str(uuid.uuid4()), "--if-exists", "skip"
    )
    assert code == 1, shown
    assert "INVALID_ARGUMENT: --if-exists 'skip' must be one of: raise, do_nothing" in _said(shown)

    # No id: a new thread each time.
    code, shown = await asyncio.to_thread(amelia, env, "threads", "create")
    assert code == 0 and shown.startswith("threads/") and _metadata_of(shown) == {}, shown


async def test_threads_update_metadata_merges_and_unsets(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    made = await tui_mesh.http.post(
        "/v1/threads", json={"thread": {"metadata": {"team": "herons", "stage": "draft"}}}
    )
    name = made.json()["thread"]["name"]

    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "update", name.removeprefix("threads/"),
        "--metadata", "stage=review", "--metadata", "owner=ada", "--unset", "team",
    )  # fmt: skip
    assert code == 0, shown
    _fits(shown)
    assert shown.splitlines()[0] == name, shown
    assert _metadata_of(shown) == {"stage": "review", "owner": "ada"}, shown
    assert (await _thread(tui_mesh, name))["metadata"] == {"stage": "review", "owner": "ada"}
    # `threads ls --metadata` finds it by what was set.
    code, listed = await asyncio.to_thread(
        amelia, env, "threads", "ls", "--metadata", "owner=ada", "--metadata", "stage=review"
    )
    assert code == 0 and name in listed, listed

    # Neither a state update nor metadata, both at once, or a key set and removed: usage errors.
    for args in (
        (),
        ('{"x": 1}', "--metadata", "a=b"),
        ("--metadata", "a=b", "--unset", "a"),
        ("--metadata", "a=b", "--as-node", "respond"),
    ):
        code, shown = await asyncio.to_thread(amelia, env, "threads", "update", name, *args)
        assert code == 2, (args, shown)
    assert (await _thread(tui_mesh, name))["metadata"] == {"stage": "review", "owner": "ada"}

    code, shown = await asyncio.to_thread(
        amelia, env, "threads", "update", str(uuid.uuid4()), "--metadata", "a=b"
    )
    assert code == 1 and _said(shown).startswith("NOT_FOUND: threads/"), shown


async def test_threads_copy_prints_the_copy_which_has_the_state(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    word = f"heron{uuid.uuid4().hex[:6]}"
    run = await _chat(tui_mesh, f"the {word} waits by the weir")
    source = run["thread"]
    await tui_mesh.http.patch(f"/v1/{source}", json={"thread": {"metadata": {"kind": word}}})

    code, shown = await asyncio.to_thread(amelia, env, "threads", "copy", source)
    assert code == 0, shown
    copy = shown.strip()
    assert copy.startswith("threads/") and copy != source and "\n" not in copy, shown

    code, state = await asyncio.to_thread(amelia, env, "threads", "state", copy, "--json")
    assert code == 0, state
    contents = [m["content"] for m in json.loads(state)["values"]["messages"]]
    assert f"the {word} waits by the weir" in contents, contents
    thread = await _thread(tui_mesh, copy)
    assert thread["metadata"] == {"kind": word} and thread.get("runCount", 0) == 0, thread

    code, shown = await asyncio.to_thread(amelia, env, "threads", "copy", str(uuid.uuid4()))
    assert code == 1 and _said(shown).startswith("NOT_FOUND: threads/"), shown


async def test_runs_rm_deletes_an_ended_run_and_refuses_a_paused_one(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    done = await _chat(tui_mesh, "the heron waits by the weir")
    await _chat(tui_mesh, "and the otter?", thread=done["thread"])
    code, shown = await asyncio.to_thread(amelia, env, "runs", "rm", done["name"])
    assert code == 0 and shown.strip() == f"deleted {done['name']}", shown
    assert (await tui_mesh.http.get(f"/v1/{done['name']}")).status_code == 404
    # Its thread keeps the state the run wrote.
    code, state = await asyncio.to_thread(amelia, env, "threads", "state", done["thread"])
    assert code == 0 and "the heron waits by the weir" in state, state

    paused = await paused_plan(env)
    # `runs delete`, the SDK's word, is the same command.
    code, shown = await asyncio.to_thread(amelia, env, "runs", "delete", paused)
    assert code == 1, shown
    _fits(shown)
    assert _said(shown) == (
        f"FAILED_PRECONDITION: {paused} is PAUSED: only an ended run (COMPLETED, FAILED or "
        "CANCELLED) can be deleted; cancel it first (`amelia runs cancel`)"
    ), shown
    assert (await tui_mesh.http.get(f"/v1/{paused}")).status_code == 200
    code, shown = await asyncio.to_thread(amelia, env, "runs", "cancel", paused)
    assert code == 0, shown


def test_a_reply_cut_at_max_tokens_is_said_where_the_run_streams() -> None:
    """`amelia run` / `runs show -f` (and the event log, the TUI's activity) say that the
    model's reply stopped at max_tokens, with the event's data as the service writes it."""
    message = (
        "local: the reply was cut at max_tokens (7): the answer is not whole; give the agent "
        "more max_tokens"
    )
    cut = {"attempt": 1, "node": "respond", "finish_reason": "length", "max_tokens": 7.0}
    lines = _shown(
        ("run.node.started", {"attempt": 1, "node": "respond"}),
        ("run.token", {"attempt": 1, "text": "The capital of France is"}),
        ("run.model.cut", {**cut, "message": message}),
    )
    assert lines[0] == "· run.node.started respond", lines
    assert lines[1] == "The capital of France is", lines
    assert _said("\n".join(lines[2:])) == f"· {message}", lines
    assert all(len(line) <= 80 for line in lines), lines
    # Without a message of its own: from its finish_reason and max_tokens.
    assert _said("\n".join(_shown(("run.model.cut", cut)))) == (
        "· model reply cut at max_tokens 7 (finish_reason length): the answer is not whole"
    )
    assert describe({"type": "run.model.cut", "data": {**cut, "message": message}}) == message
