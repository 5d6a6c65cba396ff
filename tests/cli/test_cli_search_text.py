"""`amelia search` prints a Markdown or text passage's prose flowing: a file wrapped at 100
columns, shown on 80, alternated long and short lines (seen on docs/tui.md in session 10)."""

from __future__ import annotations

from amelia_cli.commands.docs import prose_flowing

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
