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
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bs4 import BeautifulSoup

HERE = Path(__file__).parent
QUESTIONS = HERE / "questions.jsonl"
MANUAL_GLOB = "/usr/share/doc/postgresql-doc-*/html"
# The manual the questions were written on and every earlier score was measured on (Debian
# bookworm's point release); unpacked under MANUAL_CACHE, the system's own copy left alone.
MANUAL_VERSION = "15.18-0+deb12u1"
MANUAL_CACHE = Path.home() / ".cache/amelia"
# Other pages added as distractors (EVAL_DISTRACTORS), 150 by default (1.6 MB of HTML, 28 of
# them other SQL command pages): with the asked pages alone, the modes differed only in passage
# ranking; with these, they differ on file hit@1 and MRR too. The whole manual (15 MB) would take
# hours to embed on a busy 2-core machine.
DISTRACTORS = int(os.environ.get("EVAL_DISTRACTORS", "150"))
SEED = 16
# tune: looked at while tuning; held-out: written with it, never looked at; fresh: written in
# session 7 before any run on them (commit 'eval: 59 fresh questions'), never tuned on; tune2:
# written in session 13 before any run on them, tuned on with tune (the first tune split's 32
# questions could no longer choose between mechanisms: 30 of them found).
SPLITS = ("tune", "held-out", "fresh", "tune2")
FIRST_SET = ("tune", "held-out")
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
    """The pinned manual (MANUAL_VERSION), else EVAL_MANUAL, else the installed one.

    The questions quote the manual word for word, and a Debian security update rewords pages
    (15.20 renamed jsonb_set's parameters, so question 94's evidence is gone): the scores are
    only comparable between runs on the same text, so the eval reads one fixed version.
    """
    if chosen := os.environ.get("EVAL_MANUAL"):
        return Path(chosen)
    pinned = pinned_manual()
    if pinned is not None:
        return pinned
    found = sorted(glob.glob(MANUAL_GLOB))
    if not found:
        raise SystemExit(
            "the PostgreSQL manual is not installed: `make eval` installs Debian's "
            "postgresql-doc with apt (or run: apt-get install postgresql-doc)"
        )
    print(
        f"postgresql-doc-15={MANUAL_VERSION} could not be fetched; using {found[-1]}, whose"
        " wording may differ from the questions' (scores not comparable with earlier runs)",
        file=sys.stderr,
    )
    return Path(found[-1])


def pinned_manual() -> Path | None:
    """MANUAL_VERSION's HTML, fetched once with `apt-get download` and unpacked (not installed)."""
    home = MANUAL_CACHE / f"postgresql-doc-15_{MANUAL_VERSION}"
    html = home / "usr/share/doc/postgresql-doc-15/html"
    if html.is_dir():
        return html
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run(
            ["apt-get", "download", f"postgresql-doc-15={MANUAL_VERSION}"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        debs = list(Path(tmp).glob("*.deb"))
        if fetched.returncode != 0 or not debs:
            return None
        unpacked = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
        home.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(unpacked), home)
    return html if html.is_dir() else None


def questions() -> list[Question]:
    return [Question(**json.loads(line)) for line in QUESTIONS.read_text().splitlines() if line]


def section_text(page: BeautifulSoup, section: str) -> str | None:
    """The text of the element whose id is `section` (a definition term with its definition)."""
    element = page.find(id=section)
    if element is None:
        return None
    text = element.get_text(" ")
    if element.name == "dt":
        definition = element.find_next_sibling("dd")
        if definition is not None:
            text += " " + definition.get_text(" ")
    return text


def check(root: Path, asked: list[Question]) -> None:
    """Refuse a question set with a duplicate id, or a question whose evidence is not on its page.

    The evidence phrase must occur (as lower-case words) in the element of its file whose id is
    the question's section: a question pointing at the wrong page or section, or whose evidence
    was paraphrased rather than copied, is an error before anything is run.
    """
    errors: list[str] = []
    seen: set[int] = set()
    parsed: dict[str, BeautifulSoup] = {}
    for q in asked:
        if q.split not in SPLITS:
            errors.append(f"question {q.id}: split {q.split!r} is none of {', '.join(SPLITS)}")
        if q.id in seen:
            errors.append(f"question {q.id}: id used twice")
        seen.add(q.id)
        path = root / q.file
        if not path.is_file():
            errors.append(f"question {q.id}: no page {q.file}")
            continue
        if q.file not in parsed:
            parsed[q.file] = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
        text = section_text(parsed[q.file], q.section)
        if text is None:
            errors.append(f"question {q.id}: {q.file} has no element with id {q.section}")
        elif words(q.evidence) not in words(text):
            errors.append(f"question {q.id}: evidence not in {q.file}#{q.section}: {q.evidence!r}")
    if errors:
        raise SystemExit("bad questions in eval/questions.jsonl:\n" + "\n".join(errors))


def pages(root: Path, asked: list[Question]) -> list[Path]:
    """The asked pages and DISTRACTORS other pages (seeded), sorted by name.

    The distractors are drawn from the pages the first question set (tune and held-out) does not
    ask about, so adding questions does not redraw them: a later split's pages join the corpus
    (or are already in it, as distractors), the rest of the corpus and its cached embeddings stay,
    and scores before and after the addition stay comparable.
    """
    wanted = {q.file for q in asked}
    missing = [f for f in wanted if not (root / f).is_file()]
    if missing:
        raise SystemExit(f"pages missing from {root}: {', '.join(sorted(missing))}")
    first_set = {q.file for q in asked if q.split in FIRST_SET}
    others = sorted(
        p.name
        for p in root.glob("*.html")
        if p.name not in first_set and not p.name.startswith("release")
    )
    random.Random(SEED).shuffle(others)
    return sorted(root / name for name in wanted | set(others[:DISTRACTORS]))


def words(text: str) -> str:
    """Lower-case words joined by one space: how evidence is found in a passage."""
    return " ".join(_WORD.findall(text.lower()))
