"""`subscribed` comes before any event of its subscription, whichever stream brings the first
one: a catch-up subscription that hands over to the shared live stream before its own stream
opened sent the live stream's events first and its `subscribed` 5 s later, by the fallback
(QA s26 F3: 4 of 17 runs with two live and two catch-up subscriptions on one socket)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway_helpers import Client, Publisher, RunningGateway

EVENTS = 20
ROUNDS = 6
CATCH_UPS = ("a", "b")


async def publish_some(publisher: Publisher, subject: str) -> None:
    # The first event a moment after the subscribes: a catch-up whose live stream opens
    # meanwhile finds nothing after its resume point and hands over at once.
    await asyncio.sleep(0.3)
    for n in range(EVENTS):
        await publisher.publish(subject, event_type="qa.step", data={"n": n})
        await asyncio.sleep(0.01)


async def test_a_catch_up_subscription_is_answered_before_any_of_its_events(
    gateway: RunningGateway, publisher: Publisher
) -> None:
    for _ in range(ROUNDS):
        collection = f"qa{uuid.uuid4().hex[:12]}"
        subject = f"{collection}/{uuid.uuid4().hex}"
        base = await publisher.publish(subject, event_type="qa.start")
        # As the QA's socket: two live subscriptions, then two catch-ups, one of them on the
        # subject's collection (another filter).
        subscribes: list[tuple[str, dict[str, Any]]] = [
            ("live", {"filter": {"subject": subject}}),
            ("batch", {"filter": {"subject": subject}, "batch": True}),
            ("a", {"filter": {"subject": subject}, "since": base}),
            ("b", {"filter": {"subject": f"{collection}/*"}, "since": base}),
        ]
        client = await Client.connect(gateway.ws_url)
        try:
            publishing = asyncio.create_task(publish_some(publisher, subject))
            for sub_id, fields in subscribes:
                await client.send({"type": "subscribe", "id": sub_id, **fields})
            answered: set[str] = set()
            got: dict[str, list[int]] = {sub_id: [] for sub_id, _ in subscribes}
            while any(len(got[sub_id]) < EVENTS for sub_id in CATCH_UPS):
                message = await client.recv(timeout=30)
                kind, sub_id = message["type"], message.get("subscription")
                if kind == "subscribed":
                    answered.add(sub_id)
                elif kind in ("event", "events"):
                    assert sub_id in answered, f"an event of {sub_id!r} came before `subscribed`"
                    batch = message["events"] if kind == "events" else [message]
                    got[sub_id] += [int(each["sequence"]) for each in batch]
            await publishing
            # The catch-ups: every event after the resume point once, in order.
            for sub_id in CATCH_UPS:
                assert got[sub_id] == sorted(set(got[sub_id])), sub_id
                assert len(got[sub_id]) == EVENTS and got[sub_id][0] > base, sub_id
        finally:
            await client.close()
