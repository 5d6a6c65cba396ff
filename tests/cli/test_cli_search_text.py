"""`amelia search` prints a Markdown or text passage's prose flowing: a file wrapped at 100
columns, shown on 80, alternated long and short lines (seen on docs/tui.md in session 10)."""

from __future__ import annotations

from amelia.v1 import rag_pb2
from amelia_cli.commands.docs import passage_shown, prose_flowing
from amelia_cli.tui.passages import passage_text

PASSAGE = (
    """### A gateway restart costs nothing

One WebSocket serves every screen (`EventSocket`, the
same protocol as the dashboard's `ws.js`). It

1. keeps the sequence of the last event;
2. reconnects by itself, with a jittered delay from 0.25 s
   doubling to 5 s;
- a bullet
  going on

| key | what |
|---|---|
| `1` | runs |

```python
def f():
    return 1
after = f()
```

    indented code
    stays
"""
    + "Ends with a hard break  \nnext line"
)


def test_prose_flows_and_blocks_keep_their_lines() -> None:
    assert prose_flowing(PASSAGE).split("\n") == [
        "### A gateway restart costs nothing",
        "",
        "One WebSocket serves every screen (`EventSocket`, the same protocol as the "
        "dashboard's `ws.js`). It",
        "",
        "1. keeps the sequence of the last event;",
        "2. reconnects by itself, with a jittered delay from 0.25 s doubling to 5 s;",
        "- a bullet going on",
        "",
        "| key | what |",
        "|---|---|",
        "| `1` | runs |",
        "",
        "```python",
        "def f():",
        "    return 1",
        "after = f()",
        "```",
        "",
        "    indented code",
        "    stays",
        "Ends with a hard break  ",
        "next line",
    ]


def test_every_word_is_kept_in_order() -> None:
    assert prose_flowing(PASSAGE).split() == PASSAGE.split()


def test_a_nested_list_items_continuation_flows_too() -> None:
    """docs pages nest lists: a nested item's continuation is 4+ spaces in; it was taken for
    an indented code block and kept its source line break, mid-phrase, at 80 columns."""
    passage = (
        "- **Upstream outages.** If the events service drops a stream, the gateway\n"
        "  reopens it:\n"
        "    - subscribers get one `error` with `final: false`, then the events\n"
        "      continue without a gap;\n"
        "-   a four-space style item whose text\n"
        "    goes on here.\n"
        "\n"
        "    indented code after a blank line\n"
        "    keeps its lines\n"
    )
    assert prose_flowing(passage).split("\n") == [
        "- **Upstream outages.** If the events service drops a stream, the gateway reopens it:",
        "    - subscribers get one `error` with `final: false`, then the events continue "
        "without a gap;",
        "-   a four-space style item whose text goes on here.",
        "",
        "    indented code after a blank line",
        "    keeps its lines",
        "",
    ]


C_PASSAGE = """static int add(int a, int b)
{
    return a + b;  /* no overflow check */
}

int main(void) { return add(1, 2); }
"""


def test_the_tui_shows_a_code_passage_line_by_line_and_prose_flowing() -> None:
    """The TUI's search results (and `amelia search`) lay a passage out by its document's type:
    C code keeps its lines and indentation (it was squeezed into one paragraph), Markdown
    flows, a PDF's layout line breaks go."""
    code_hit = {"documentTitle": "add.c", "documentType": "DOCUMENT_TYPE_CODE"}
    shown = passage_text(1, {**code_hit, "content": C_PASSAGE}).plain.split("\n", 1)[1]
    assert shown == C_PASSAGE.rstrip("\n")
    markdown = {"documentTitle": "a.md", "documentType": "DOCUMENT_TYPE_MARKDOWN"}
    shown = passage_text(1, {**markdown, "content": "one\ntwo\n\n```c\nint x;\nint y;\n```"}).plain
    assert shown.split("\n", 1)[1] == "one two\n\n```c\nint x;\nint y;\n```"
    pdf = {"documentTitle": "a.pdf", "documentType": "DOCUMENT_TYPE_PDF", "content": "a\nb\n\nc"}
    assert passage_text(1, pdf).plain.split("\n", 1)[1] == "a b c"


def test_a_pdf_passage_flows_and_keeps_its_list_items() -> None:
    """A PDF's layout lines (trailing spaces and all, not Markdown hard breaks) join into
    paragraphs for the terminal to wrap (QA s21 F13); list items keep their lines; HTML and code
    are printed as they are."""
    pdf = "Packages are installed in  \nthe packages directory as\ndescribed above.\n• one\n• two"
    assert passage_shown(pdf, rag_pb2.DOCUMENT_TYPE_PDF) == (
        "Packages are installed in the packages directory as described above.\n• one\n• two"
    )
    assert passage_shown("a\nb", rag_pb2.DOCUMENT_TYPE_HTML) == "a\nb"
    assert passage_shown("a\nb", rag_pb2.DOCUMENT_TYPE_CODE) == "a\nb"
