"""What the API offers on threads and runs, in the TUI (session 27 added it to the API only), driven
headless by keys at 80×24 against the real mesh behind a real gateway: a thread's metadata shown
and edited (`M`), the thread copied and the copy opened (`y`), an ended run deleted after asking
(`d`), and no delete offered on a run still going."""

from __future__ import annotations

from typing import Any

from test_tui_threads import open_thread, reaches, start, text_of
from textual.widgets import TextArea
from tui_helpers import TuiMesh, on_screen, running_tui, wait_until

from amelia_cli.tui.common import ConfirmScreen
from amelia_cli.tui.run_view import RunScreen
from amelia_cli.tui.thread_meta import MetadataEditScreen, metadata_patch
from amelia_cli.tui.thread_view import ThreadScreen

COMPLETED = {"RUN_STATUS_COMPLETED"}


def _offers_delete(app: Any) -> bool:
    """The screen on top has `d` Delete enabled (what the footer shows)."""
    found = app.screen.active_bindings.get("d")
    return found is not None and found.enabled and found.binding.action == "delete"


async def _press_until_asked(pilot: Any, app: Any, screen: RunScreen, what: str) -> None:
    """`d` on the run screen until the question shows. On a busy CI machine a `d` was once lost
    in 150 s with the footer offering it and the screen on top (not understood; a person would
    press again): each press gets 10 s, then another, and the test still fails if none asks."""
    for _ in range(6):
        await pilot.press("d")
        try:
            await wait_until(lambda: isinstance(app.screen, ConfirmScreen), what, timeout=10)
            return
        except AssertionError:
            continue
    seen = (app.screen_stack, app.focused, screen.status, _offers_delete(app))
    raise AssertionError(f"{what}: no question after 6 presses of d; instead: {seen}")


async def _thread(mesh: TuiMesh, name: str) -> dict[str, Any]:
    return dict((await mesh.get(f"/v1/{name}"))["thread"])


def test_an_edit_sends_what_changed_and_null_for_what_was_taken_out() -> None:
    old = {"team": "herons", "stage": "draft", "n": 2}
    assert metadata_patch(old, {"team": "herons", "stage": "review", "owner": "ada"}) == {
        "stage": "review",
        "owner": "ada",
        "n": None,
    }
    assert metadata_patch(old, old) == {}


async def test_metadata_is_edited_and_the_thread_copied(tui_mesh: TuiMesh) -> None:
    made = await tui_mesh.post("/v1/threads", {"thread": {"metadata": {"team": "herons"}}})
    thread = str(made["thread"]["name"])
    run = await start(tui_mesh, "chat", "the heron waits by the weir", thread)
    await reaches(tui_mesh, run["name"], COMPLETED)
    async with running_tui(tui_mesh.url) as pilot:
        screen = await open_thread(pilot, thread)
        await wait_until(
            lambda: '{"team": "herons"}' in text_of(screen, "#thread-state-text"),
            "the metadata is shown",
        )

        await pilot.press("M")
        await wait_until(lambda: isinstance(pilot.app.screen, MetadataEditScreen), "the editor")
        editor = on_screen(pilot, MetadataEditScreen)
        editor.query_one("#edit-values", TextArea).load_text('{"owner": "ada"}')
        await pilot.press("ctrl+s")
        await wait_until(lambda: pilot.app.screen is screen, "the editor closes once saved")
        assert (await _thread(tui_mesh, thread))["metadata"] == {"owner": "ada"}
        assert '{"owner": "ada"}' in text_of(screen, "#thread-state-text")

        await pilot.press("y")
        await wait_until(
            lambda: isinstance(pilot.app.screen, ThreadScreen) and pilot.app.screen is not screen,
            "the copy opens",
        )
        copy: ThreadScreen = on_screen(pilot, ThreadScreen)
        assert copy.thread != thread
        await wait_until(lambda: copy.loaded, "the copy is loaded")
        assert "the heron waits by the weir" in text_of(copy, "#thread-state-text")
        assert '{"owner": "ada"}' in text_of(copy, "#thread-state-text")
        await pilot.press("escape")
        await wait_until(lambda: pilot.app.screen is screen, "Esc goes back to the source")
    copied = await _thread(tui_mesh, copy.thread)
    assert copied.get("runCount", 0) == 0 and copied["metadata"] == {"owner": "ada"}, copied


async def test_an_ended_run_is_deleted_after_asking_and_a_paused_one_is_not_offered(
    tui_mesh: TuiMesh,
) -> None:
    done = await start(tui_mesh, "chat", "delete me")
    paused = await start(tui_mesh, "plan", "keep me")
    await reaches(tui_mesh, done["name"], COMPLETED)
    await reaches(tui_mesh, paused["name"], {"RUN_STATUS_PAUSED"})
    async with running_tui(tui_mesh.url) as pilot:
        app: Any = pilot.app
        app.open_run(paused["name"])
        await wait_until(lambda: isinstance(app.screen, RunScreen), "the run opens")
        screen: RunScreen = on_screen(pilot, RunScreen)
        await wait_until(lambda: screen.status == "paused", "the run is paused")
        await pilot.press("d")  # not offered: the run has not ended
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("escape")

        app.open_run(done["name"])
        await wait_until(
            lambda: isinstance(app.screen, RunScreen) and app.screen.run_name == done["name"],
            "the run opens",
        )
        screen = on_screen(pilot, RunScreen)
        await wait_until(lambda: screen.status == "completed", "the run is completed")
        await wait_until(lambda: _offers_delete(app), "the footer offers d Delete")
        await _press_until_asked(pilot, app, screen, "it asks first")
        await pilot.press("n")
        await wait_until(lambda: app.screen is screen, "No keeps it")
        await _press_until_asked(pilot, app, screen, "it asks again")
        await pilot.press("y")
        await wait_until(lambda: not isinstance(app.screen, RunScreen), "back, once deleted")
    status = (await tui_mesh.http.get(f"/v1/{done['name']}")).status_code
    assert status == 404
    await tui_mesh.post(f"/v1/{paused['name']}:cancel", {})
