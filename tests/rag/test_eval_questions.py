"""`make eval` refuses a question whose evidence is not on its page's section (eval.corpus.check).

The question sets are only worth something if each question's expected passage really is where
it says: a paraphrased evidence phrase, a wrong section id or a typo in a file name would make
a question unanswerable and silently lower every mode's score.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

# eval/ is a top-level folder of the repository, not an installed package (python -m eval runs
# from the root); pytest's pythonpath does not hold the root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from eval.corpus import Question, check

PAGE = """<html><body><div class="sect1" id="GUC-LOCK-TIMEOUT-PAGE">
<dl><dt id="GUC-LOCK-TIMEOUT"><code>lock_timeout</code> (<code>integer</code>)</dt>
<dd><p>Abort any statement that waits longer than the specified amount of time
while attempting to acquire a lock.</p></dd>
<dt id="GUC-OTHER">other</dt><dd><p>Something else entirely.</p></dd></dl></div></body></html>"""

GOOD = Question(
    id=1,
    question="How do I stop waiting on locks?",
    file="page.html",
    section="GUC-LOCK-TIMEOUT",
    evidence="Abort any statement that waits longer than the specified amount of time",
    split="fresh",
)


@pytest.fixture
def manual(tmp_path: Path) -> Path:
    (tmp_path / "page.html").write_text(PAGE, encoding="utf-8")
    return tmp_path


def test_a_definition_entry_holds_its_definition_text(manual: Path) -> None:
    check(manual, [GOOD, dataclasses.replace(GOOD, id=2, section="GUC-LOCK-TIMEOUT-PAGE")])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"evidence": "Cancel statements that wait too long"}, "evidence not in page.html#"),
        ({"section": "GUC-OTHER"}, "evidence not in page.html#GUC-OTHER"),
        ({"section": "GUC-NOPE"}, "has no element with id GUC-NOPE"),
        ({"file": "missing.html"}, "no page missing.html"),
        ({"split": "tuned"}, "split 'tuned' is none of"),
    ],
)
def test_a_bad_question_stops_the_run_naming_it(
    manual: Path, change: dict[str, str], message: str
) -> None:
    with pytest.raises(SystemExit, match=message):
        check(manual, [Question(**{**dataclasses.asdict(GOOD), **change})])


def test_an_id_used_twice_is_refused(manual: Path) -> None:
    with pytest.raises(SystemExit, match="question 1: id used twice"):
        check(manual, [GOOD, GOOD])


def test_the_pinned_manual_is_read_when_unpacked_else_the_named_one(
    manual: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A security update rewords the installed manual; the eval reads the version it was written on."""
    import eval.corpus as corpus

    monkeypatch.delenv("EVAL_MANUAL", raising=False)
    monkeypatch.setattr(corpus, "MANUAL_CACHE", tmp_path / "cache")
    pinned = (
        tmp_path
        / "cache"
        / f"postgresql-doc-15_{corpus.MANUAL_VERSION}/usr/share/doc/postgresql-doc-15/html"
    )
    pinned.mkdir(parents=True)
    assert corpus.manual_dir() == pinned
    monkeypatch.setenv("EVAL_MANUAL", str(manual))
    assert corpus.manual_dir() == manual
