"""The evaluation corpus: pages of the PostgreSQL manual (Debian's `postgresql-doc` HTML).

The pages every question points at, plus a seeded sample of other pages as distractors (release
notes excluded), so that the right page has to be found among many that look alike.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
QUESTIONS = HERE / "questions.jsonl"
MANUAL_GLOB = "/usr/share/doc/postgresql-doc-*/html"
# Other pages added as distractors (EVAL_DISTRACTORS), 150 by default (1.6 MB of HTML, 28 of
# them other SQL command pages): with the asked pages alone, the modes differed only in passage
# ranking; with these, they differ on file hit@1 and MRR too. The whole manual (15 MB) would take
# hours to embed on a busy 2-core machine.
DISTRACTORS = int(os.environ.get("EVAL_DISTRACTORS", "150"))
SEED = 16
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Question:
    id: int
    question: str
    file: str
    section: str
    evidence: str
    split: str


def manual_dir() -> Path:
    found = sorted(glob.glob(MANUAL_GLOB))
    if not found:
        raise SystemExit(
            "the PostgreSQL manual is not installed: `make eval` installs Debian's "
            "postgresql-doc with apt (or run: apt-get install postgresql-doc)"
        )
    return Path(found[-1])


def questions() -> list[Question]:
    return [Question(**json.loads(line)) for line in QUESTIONS.read_text().splitlines() if line]


def pages(root: Path, asked: list[Question]) -> list[Path]:
    """The asked pages and DISTRACTORS other pages (seeded), sorted by name."""
    wanted = {q.file for q in asked}
    missing = [f for f in wanted if not (root / f).is_file()]
    if missing:
        raise SystemExit(f"pages missing from {root}: {', '.join(sorted(missing))}")
    others = sorted(
        p.name
        for p in root.glob("*.html")
        if p.name not in wanted and not p.name.startswith("release")
    )
    random.Random(SEED).shuffle(others)
    return sorted(root / name for name in [*wanted, *others[:DISTRACTORS]])


def words(text: str) -> str:
    """Lower-case words joined by one space: how evidence is found in a passage."""
    return " ".join(_WORD.findall(text.lower()))
