"""What the CLI sends for a name typed on its command line: an id gets its collection, a name
is sent as typed — so the service's refusal quotes what the user typed (QA s19: `amelia crons
rm Crons/66D4…` was refused as `crons/Crons/66D4…`)."""

from __future__ import annotations

import pytest

from amelia_cli.client import resource


@pytest.mark.parametrize(
    ("typed", "sent"),
    [
        ("66d4e1c2-0000-4000-8000-000000000000", "crons/66d4e1c2-0000-4000-8000-000000000000"),
        (
            "crons/66d4e1c2-0000-4000-8000-000000000000",
            "crons/66d4e1c2-0000-4000-8000-000000000000",
        ),
        (
            "Crons/66D4E1C2-0000-4000-8000-000000000000",
            "Crons/66D4E1C2-0000-4000-8000-000000000000",
        ),
        ("runs/66d4e1c2-0000-4000-8000-000000000000", "runs/66d4e1c2-0000-4000-8000-000000000000"),
    ],
)
def test_an_id_gets_its_collection_and_a_name_is_sent_as_typed(typed: str, sent: str) -> None:
    assert resource("crons", typed) == sent
