"""What the dashboard tests do on a page: screenshots with a contrast check, starting a run from
the form, reading the run's output and status, finding rows of the runs table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

# WCAG 2 contrast of every visible piece of text against the background it is drawn on.
CONTRAST_JS = """
() => {
  const parse = (c) => { const m = c.match(/[\\d.]+/g) || []; return m.map(Number); };
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const [r, g, b, a = 1] = parse(getComputedStyle(node).backgroundColor);
      if (a > 0.5) return [r, g, b];
    }
    return parse(getComputedStyle(document.body).backgroundColor);
  };
  const failures = [];
  for (const el of document.querySelectorAll("body *")) {
    const text = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.data).join("").trim();
    if (!text || el.closest("[hidden], [aria-hidden=true], :disabled, .visually-hidden, option")) continue;
    const rect = el.getBoundingClientRect();
    if (!rect.width || !rect.height || rect.bottom < 0 || rect.top > innerHeight) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || Number(style.opacity) < 1) continue;
    if (el.closest("dialog") && !el.closest("dialog[open]")) continue;
    const fg = lum(parse(style.color)), bg = lum(background(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    if (ratio < needed) failures.push(`${text.slice(0, 30)} (${ratio.toFixed(2)} < ${needed})`);
  }
  return failures;
}
"""


def shot(page: Page, artifacts: Path, name: str) -> None:
    """Save the screen, and check its text is readable (WCAG AA contrast)."""
    page.screenshot(path=str(artifacts / f"{name}.png"))
    failures = page.evaluate(CONTRAST_JS)
    assert not failures, f"{name}: text with too little contrast: {failures}"


def start_run(page: Page, target: str, fields: dict[str, str]) -> str:
    """Fill the start form on the Runs screen and start; returns the run id."""
    page.goto("/#/runs")
    page.wait_for_selector(f'#run-target option[value="{target}"]', state="attached")
    page.select_option("#run-target", target)
    for name, value in fields.items():
        page.fill(f'[data-field="{name}"]', value)
    page.click("#run-start")
    page.wait_for_url(re.compile(r".*#/runs/[0-9a-f-]+$"))
    return page.url.rsplit("/", 1)[-1]


def target_row(page: Page, target: str) -> Locator:
    """Rows of the runs table whose target (workflow or agent id) is `target`."""
    cell = page.locator("td.mono", has_text=re.compile(f"^{re.escape(target)}$"))
    return page.locator("#runs-table tbody tr", has=cell)


# The streamed text of the run's output: its pages' text, without the section labels.
OUTPUT_JS = """() => [...document.querySelectorAll('#run-output .page')]
  .map((page) => [...page.childNodes].filter((n) => n.nodeType === 3).map((n) => n.data).join(''))
  .join('')"""


def output_text(page: Page) -> str:
    text: str = page.evaluate(OUTPUT_JS)
    return text


def expect_output(page: Page, expected: str, timeout: float = 30_000) -> None:
    """Wait until the run's output is exactly `expected` (tokens are written once per frame)."""
    try:
        page.wait_for_function(
            f"(expected) => ({OUTPUT_JS})() === expected", arg=expected, timeout=timeout
        )
    except PlaywrightTimeoutError:
        activity = page.locator("#run-activity").inner_text()
        raise AssertionError(
            f"output {output_text(page)!r} != {expected!r}; activity:\n{activity}"
        ) from None


def expect_status(page: Page, status: str, timeout: float = 60_000) -> None:
    expect(page.locator(f"#run-status [data-status={status}]")).to_be_visible(timeout=timeout)


class Problems(list[str]):
    """Uncaught exceptions and console errors: any of them fails the test."""


def open_signed_in(
    browser: Browser, mesh: Any, viewport: dict[str, int]
) -> tuple[BrowserContext, Page, Problems]:
    """A page of `mesh` at `viewport`, signed in and connected, with what it reports as
    uncaught errors and console errors (a 400 the page shows as a message is not one)."""
    context = browser.new_context(viewport=viewport, base_url=mesh.url)  # type: ignore[arg-type]
    context.set_default_timeout(30_000)
    page = context.new_page()
    problems = Problems()
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))

    def console(message: ConsoleMessage) -> None:
        # A 400 the page shows as a message (a bad filter) is not a page error.
        if message.type == "error" and "status of 400" not in message.text:
            problems.append(f"console: {message.text}")

    page.on("console", console)
    page.goto(f"/?token={mesh.token}#/status")
    page.wait_for_selector("#connection[data-state=open]")
    return context, page, problems
