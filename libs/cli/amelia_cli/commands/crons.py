"""`amelia crons …`: runs on a schedule (CronService, served by the agents service) — create,
list (the next run and the last ticks), show with the recent ticks, pause and resume, trigger
now, remove — 80 columns wide."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import typer
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from amelia.v1 import agents_pb2_grpc, crons_pb2, crons_pb2_grpc
from amelia_cli.client import (
    Column,
    ago,
    call_rpc,
    channel_to,
    json_object,
    listing,
    resource,
    said,
    unprefixed,
)
from amelia_cli.commands.agents import _target
from amelia_cli.commands.threads import _metadata
from amelia_cli.consoles import console
from amelia_cli.help_text import App
from amelia_common.json_numbers import message_dict, message_text

if TYPE_CHECKING:
    from amelia.v1.agents_pb2_grpc import AgentServiceAsyncStub
    from amelia.v1.crons_pb2_grpc import CronServiceAsyncStub

crons_app = App(
    help="Crons: runs of an agent or workflow on a schedule (5-field cron, UTC or --tz).",
    no_args_is_help=True,
)
Result = TypeVar("Result")


# At 80 columns the last ticks are left to `crons get` (and wider terminals): what a cron runs
# tells one cron from another, its uuid does not. Then the short forms: the cron's id and its
# target without their collections, as the commands take them; the schedule (and a long
# agent id) fold in what is left.
CRON_COLUMNS = (
    Column("cron", brief=unprefixed),
    Column("schedule", wraps=True),
    Column("next"),  # when, or why none: paused, ended
    Column("last (ago)", drop=1),  # the last ticks, one line each, newest first: `fired 5m`
    Column("target", wraps=True, brief=unprefixed),
)
LAST_TICKS = 3  # in `crons ls`; `crons get` lists every recent one (up to 10)
ACTION_COLUMNS = (
    Column("tick"),
    Column("outcome"),
    Column("run or reason", wraps=True),
)
# What a tick does when the cron's thread still has a run (`--multitask`).
BUSY = {
    "reject": "reject: the tick is skipped",
    "enqueue": "enqueue: the run waits for the thread's run",
    "interrupt": "interrupt: the thread's run is cancelled",
    "rollback": "rollback: the thread's run is cancelled and deleted",
}
# A cron without a thread: each tick's run gets a new thread, so no strategy applies (the service
# refuses one other than reject, as LangGraph Server's stateless crons have none).
NEVER_BUSY = "a new thread each tick: never busy"
# What pause and resume add when the cron's end has passed (it stays ended either way).
STILL_ENDED = "it has ended: no tick fires until its end is moved"
END_FORMS = "an ISO time, e.g. 2026-12-03T14:03 (UTC) or 2026-12-03T14:03+01:00 (offset under 24h)"
# The request fields `create` and `update` fill from what the person typed, as the agents
# service names them in its messages → the flag or argument (`client.in_cli_words`).
CRON_FLAGS = {
    "cron.timezone": "--tz",
    "cron.end_time": "--end",
    "cron.multitask_strategy": "--multitask",
    "cron.thread": "--thread",
    "cron.webhook": "--webhook",
    "cron.metadata": "--metadata",
}
OUTCOMES = {
    crons_pb2.CRON_OUTCOME_FIRED: "fired",
    crons_pb2.CRON_OUTCOME_SKIPPED: "skipped",
    crons_pb2.CRON_OUTCOME_FAILED: "failed",
}


@asynccontextmanager
async def _stubs() -> AsyncIterator[tuple[CronServiceAsyncStub, AgentServiceAsyncStub]]:
    """(CronService, AgentService) stubs on one channel to the agents service."""
    async with channel_to("agents") as channel:
        yield (
            cast("CronServiceAsyncStub", crons_pb2_grpc.CronServiceStub(channel)),
            cast("AgentServiceAsyncStub", agents_pb2_grpc.AgentServiceStub(channel)),
        )


def _call(
    rpc: Callable[[CronServiceAsyncStub], Awaitable[Result]], flags: dict[str, str] | None = None
) -> Result:
    async def go() -> Result:
        async with _stubs() as (stub, _):
            return await rpc(stub)

    return call_rpc(go, flags)


def _flags(schedule: str, input_json: str) -> dict[str, str]:
    """CRON_FLAGS with the schedule as it was typed (create's argument, update's option) and the
    input as it was given (`--input`, else `--message`: "--message: input.message is required")."""
    given = "--input" if input_json else "--message"
    return CRON_FLAGS | {"cron.schedule": schedule, "cron.input": given}


def until(when: Timestamp, now: dt.datetime | None = None) -> str:
    """A time to come as how soon (`in 4m`); the date after a month."""
    then = when.ToDatetime(dt.UTC)
    seconds = (then - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if seconds >= 30 * 86400:
        return then.date().isoformat()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            return f"in {seconds // size:.0f}{unit}"
    return "now"


def state(cron: crons_pb2.Cron, joined: str = " · ") -> str:
    """active, paused, ended — or `ended · paused`: an ended cron keeps its paused flag, which
    matters again once its end is moved."""
    if cron.ended:
        return joined.join(("ended", "paused")) if cron.paused else "ended"
    return "paused" if cron.paused else "active"


def if_busy(cron: crons_pb2.Cron) -> str:
    """What a tick does while the cron's thread still has a run."""
    if not cron.thread:
        return NEVER_BUSY
    return BUSY.get(cron.multitask_strategy, cron.multitask_strategy)


def _schedule(cron: crons_pb2.Cron) -> str:
    return f"{cron.schedule} {cron.timezone}" if cron.timezone else cron.schedule


def cron_row(cron: crons_pb2.Cron, now: dt.datetime | None = None) -> tuple[str, ...]:
    # Both facts of an ended, paused cron one per line: the schedule keeps its width.
    upcoming = (
        until(cron.next_run_time, now) if cron.HasField("next_run_time") else state(cron, "\n")
    )
    ticks = "\n".join(
        f"{OUTCOMES.get(action.outcome, '?')} {ago(action.schedule_time, now).removesuffix(' ago')}"
        for action in cron.recent_actions[:LAST_TICKS]
    )
    target = cron.agent or cron.workflow
    return (cron.name, _schedule(cron), upcoming, ticks, target)


def action_row(action: crons_pb2.CronAction, now: dt.datetime | None = None) -> tuple[str, ...]:
    outcome = OUTCOMES.get(action.outcome, "?")
    if action.triggered:
        outcome += " (trigger)"
    detail = action.run or action.reason
    if action.run and action.reason:  # a run on a busy thread: `queued behind runs/…`
        detail += f" ({action.reason})"
    if action.missed_ticks:
        ticks = "tick" if action.missed_ticks == 1 else "ticks"
        detail += f" ({action.missed_ticks} missed {ticks} before it)"
    return (ago(action.schedule_time, now), outcome, detail)


def show(cron: crons_pb2.Cron, out: Console = console, now: dt.datetime | None = None) -> None:
    """A cron as lines a person reads, then its recent ticks."""
    upcoming = "-"
    if cron.HasField("next_run_time"):
        upcoming = f"{cron.next_run_time.ToJsonString()} ({until(cron.next_run_time, now)})"
    fields = [
        ("target", cron.agent or cron.workflow),
        ("thread", cron.thread or "a new one for each run"),
        ("schedule", f"{cron.schedule} ({cron.timezone or 'UTC'})"),
        ("state", state(cron)),
        ("next run", upcoming),
        ("if busy", if_busy(cron)),
        (
            "ticks",
            f"{cron.fired_count} fired, {cron.skipped_count} skipped (thread busy), "
            f"{cron.failed_count} failed",
        ),
    ]
    if cron.HasField("end_time"):
        fields.append(("ends", cron.end_time.ToJsonString()))
    if cron.input:
        fields.append(("input", json.dumps(message_dict(cron.input), ensure_ascii=False)))
    if cron.metadata:
        fields.append(("metadata", json.dumps(message_dict(cron.metadata), ensure_ascii=False)))
    if cron.webhook:
        fields.append(("webhook", cron.webhook))
    out.print(said((cron.name, "bold")))
    for label, value in fields:
        out.print(said((f"{label:<10}", "bold"), value))
    if cron.recent_actions:
        listing(out, ACTION_COLUMNS, [action_row(a, now) for a in cron.recent_actions])


def _input(message: str, input_json: str) -> dict[str, Any]:
    if message and input_json:
        raise typer.BadParameter("give --message or --input, not both", param_hint="--input")
    if not input_json:
        return {"message": message} if message else {}
    return json_object(input_json, "--input")


def _end(value: str) -> Timestamp | None:
    if not value:
        return None
    try:  # one message for any bad form: Python's own (a timedelta's repr) is no help
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not {END_FORMS}", param_hint="--end") from None
    stamp = Timestamp()
    stamp.FromDatetime(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
    return stamp


@crons_app.command("create")
def create(
    target: str = typer.Argument(..., help="An agent id or a workflow name."),
    schedule: str = typer.Argument(..., help="5 fields: minute hour day month weekday."),
    message: str = typer.Option("", "--message", "-m", help="Each run's input message."),
    input_json: str = typer.Option("", "--input", help="Each run's input as a JSON object."),
    thread: str = typer.Option("", help="Run on this thread (else a new thread per run)."),
    metadata: list[str] = typer.Option([], "--metadata", help="The cron's metadata: key=value."),
    timezone: str = typer.Option("", "--tz", help="IANA zone the schedule is read in."),
    paused: bool = typer.Option(False, "--paused", help="Create it paused."),
    end: str = typer.Option("", help="No run at or after this ISO time (UTC if no zone)."),
    multitask: str = typer.Option(
        "",
        "--multitask",
        help="If the --thread still has a run at a tick: reject (the default: skip the tick), "
        "enqueue (run after it), interrupt (stop it, keep its state) or rollback (stop and "
        "delete it). Only with --thread: without one each tick's thread is new, never busy.",
    ),
    webhook: str = typer.Option(
        "",
        "--webhook",
        help="POST each run to this http(s) URL when it pauses and when it ends (as run --webhook).",
    ),
) -> None:
    """Schedule runs of an agent or workflow."""
    cron = crons_pb2.Cron(
        schedule=schedule,
        timezone=timezone,
        paused=paused,
        multitask_strategy=multitask,
        webhook=webhook,
    )
    cron.input.update(_input(message, input_json))
    cron.metadata.update(_metadata(metadata, "--metadata"))
    if thread:
        cron.thread = resource("threads", thread)
    end_time = _end(end)
    if end_time is not None:
        cron.end_time.CopyFrom(end_time)

    async def go() -> crons_pb2.Cron:
        async with _stubs() as (stub, agents):
            run = await _target(agents, target)
            which = run.WhichOneof("target") or "agent"
            setattr(cron, which, getattr(run, which))
            reply = await stub.CreateCron(crons_pb2.CreateCronRequest(cron=cron))
            return reply.cron

    show(call_rpc(go, _flags("SCHEDULE", input_json)))


@crons_app.command("ls")
def ls_crons(
    agent: str = typer.Option("", help="Only this agent's crons."),
    thread: str = typer.Option("", help="Only the crons on this thread."),
    workflow: str = typer.Option("", help="Only this workflow's crons."),
    limit: int = typer.Option(50, min=1, help="At most this many."),
) -> None:
    """List crons, oldest first."""
    request = crons_pb2.ListCronsRequest(
        page_size=limit,
        agent=resource("agents", agent) if agent else "",
        thread=resource("threads", thread) if thread else "",
        workflow=resource("workflows", workflow) if workflow else "",
    )
    found = _call(lambda stub: stub.ListCrons(request))
    listing(console, CRON_COLUMNS, [cron_row(c) for c in found.crons], empty="no crons")


@crons_app.command("get")
def get(
    cron: str = typer.Argument(..., help="The cron (crons/<id> or <id>)."),
    as_json: bool = typer.Option(False, "--json", help="The whole cron as JSON."),
) -> None:
    """A cron: its schedule, next run, counts and recent ticks."""
    request = crons_pb2.GetCronRequest(name=resource("crons", cron))
    found = _call(lambda stub: stub.GetCron(request)).cron
    if as_json:
        console.print_json(message_text(found))
    else:
        show(found)


@crons_app.command("update")
def update(
    cron: str = typer.Argument(..., help="The cron (crons/<id> or <id>)."),
    schedule: str = typer.Option("", help="A new schedule (5 fields); the next run from now."),
    timezone: str = typer.Option("", "--tz", help="A new IANA zone for the schedule."),
    end: str = typer.Option("", help="A new end: no run at or after this ISO time."),
    no_end: bool = typer.Option(False, "--no-end", help="Remove the end."),
    multitask: str = typer.Option(
        "", "--multitask", help="reject, enqueue, interrupt or rollback (see create)."
    ),
    message: str = typer.Option("", "--message", "-m", help="A new input message for each run."),
    input_json: str = typer.Option("", "--input", help="A new input as a JSON object."),
    metadata: list[str] = typer.Option(
        [], "--metadata", help="New metadata, key=value (replaces it all)."
    ),
    webhook: str = typer.Option(
        "", "--webhook", help="A new webhook for the runs made from now on."
    ),
    no_webhook: bool = typer.Option(False, "--no-webhook", help="Remove the webhook."),
) -> None:
    """Change a cron's schedule, zone, end, input, metadata, webhook or what a tick does on a
    busy thread."""
    if end and no_end:
        raise typer.BadParameter("give --end or --no-end, not both", param_hint="--end")
    if webhook and no_webhook:
        raise typer.BadParameter("give --webhook or --no-webhook, not both", param_hint="--webhook")
    change = crons_pb2.Cron(
        name=resource("crons", cron),
        schedule=schedule,
        timezone=timezone,
        multitask_strategy=multitask,
        webhook=webhook,
    )
    change.input.update(_input(message, input_json))
    change.metadata.update(_metadata(metadata, "--metadata"))
    end_time = _end(end)
    if end_time is not None:
        change.end_time.CopyFrom(end_time)
    given = {
        "schedule": schedule,
        "timezone": timezone,
        "end_time": end or no_end,
        "multitask_strategy": multitask,
        "input": message or input_json,
        "metadata": metadata,
        "webhook": webhook or no_webhook,
    }
    mask = [name for name, value in given.items() if value]
    if not mask:
        raise typer.BadParameter(
            "nothing to change: give --schedule, --tz, --end, --no-end, --multitask, "
            "--message, --input, --metadata, --webhook or --no-webhook"
        )
    request = crons_pb2.UpdateCronRequest(cron=change, update_mask=mask)
    show(_call(lambda stub: stub.UpdateCron(request), _flags("--schedule", input_json)).cron)


def _set_paused(cron: str, paused: bool) -> None:
    change = crons_pb2.Cron(name=resource("crons", cron), paused=paused)
    request = crons_pb2.UpdateCronRequest(cron=change, update_mask=["paused"])
    found = _call(lambda stub: stub.UpdateCron(request)).cron
    if found.ended:  # the flag changed, the cron stays ended: say both
        done = "paused" if found.paused else "resumed"
        console.print(said(f"{found.name}: {done} ({STILL_ENDED})"))
        return
    upcoming = f", next run {until(found.next_run_time)}" if found.HasField("next_run_time") else ""
    console.print(said(f"{found.name}: {state(found)}{upcoming}"))


@crons_app.command("pause")
def pause(cron: str = typer.Argument(..., help="The cron (crons/<id> or <id>).")) -> None:
    """Pause a cron: no tick fires until it is resumed."""
    _set_paused(cron, True)


@crons_app.command("resume")
def resume(cron: str = typer.Argument(..., help="The cron (crons/<id> or <id>).")) -> None:
    """Resume a paused cron from now (the ticks missed while paused do not fire)."""
    _set_paused(cron, False)


@crons_app.command("trigger")
def trigger(cron: str = typer.Argument(..., help="The cron (crons/<id> or <id>).")) -> None:
    """Start a run of the cron now, paused or not."""
    request = crons_pb2.TriggerCronRequest(name=resource("crons", cron))
    found = _call(lambda stub: stub.TriggerCron(request))
    console.print(said(found.run.name))  # a name and a thread are more than 80 columns
    console.print(said(f"  in {found.run.thread}"))


@crons_app.command("rm")
def rm(crons: list[str] = typer.Argument(..., help="Crons (crons/<id> or <id>).")) -> None:
    """Remove crons (the runs they started stay)."""

    async def go() -> None:
        async with _stubs() as (stub, _):
            for cron in crons:
                name = resource("crons", cron)
                await stub.DeleteCron(crons_pb2.DeleteCronRequest(name=name))
                console.print(said(f"deleted {name}"))

    call_rpc(go)
