"""Safe markdown: hostile outside text, put into markdown through `observer.markdown`, is shown as
text (rendered by a CommonMark parser with GitHub's tables); it never becomes a link, an image,
HTML, a heading, emphasis, a list, a quote, a code block or a new table column.

GitHub's autolinks (`http://…`, `www.…`, `a@b.c` in plain text) are a GFM extension the test parser
does not have: the escaped source is checked to hold none of them, and the browser test checks both
Prefect UIs' own renderers (tests/test_browser.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from observer import markdown
from observer.markdown import REPLACEMENT
from observer.ops import Op
from observer.pipelines import analysis
from observer.pipelines.analysis import AnalysisReport, AnalyzeParameters
from observer.pipelines.playbooks import ConsolidateParameters, ConsolidationReport, build_playbook
from observer.settings import Settings
from observer.upstream import LogEntry
from tests.rendered import as_html, shown, text_of

HOSTILE = [
    "[x](http://evil)",
    "![](http://evil/p.png)",
    '<img src="http://evil/p.png" onerror="alert(1)">',
    "<script>alert(1)</script>",
    "# heading",
    "## heading\n===",
    "text\n# heading on the next line",
    "under a setext line\n---",
    "1. a list\n- another",
    "> a quote",
    "```\nfenced\n```",
    "~~~\nfenced\n~~~",
    "`code` and ``more ` code``",
    "a | pipe | in | a cell",
    "**bold** __also__ *em* _em_ ~~struck~~",
    "[ref]: http://evil\n[ref]",
    "<http://evil> http://evil.com/p?q=1 www.evil.com mail@evil.com",
    "[x](javascript:alert(1))",
    "&lt;b&gt; &amp; &#60;img&#62;",
    "trailing backslash \\",
    "    four spaces: an indented block",
    "\x00nul \x07bell \u202eevil\u202c \ufeffbom",
    "🚀 __proto__ constructor",
]
FORBIDDEN_TAGS = re.compile(
    r"<(a|img|script|h[1-6]|em|strong|del|ul|ol|li|blockquote|hr|pre|code|table|br)\b"
)


def flat(value: str) -> str:
    """What `text` shows: one line, hidden characters replaced."""
    value = re.sub("\r\n|[\r\n\u2028\u2029\x85]", " ", value).replace("\t", " ")
    return re.sub(
        "[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff]", REPLACEMENT, value
    )


def outside_code(html: str) -> str:
    """The HTML without its code spans: where a renderer's post-parse autolink search looks."""
    return re.sub(r"<code>.*?</code>", "", html, flags=re.S)


def no_autolink_seed(html: str) -> bool:
    return re.search(r"(?i)www\.|://|mailto:|xmpp:|@", text_of(outside_code(html))) is None


@pytest.mark.parametrize("hostile", HOSTILE)
def test_text_is_shown_as_written_in_a_paragraph_a_list_item_and_a_heading(hostile: str) -> None:
    escaped = markdown.text(hostile)
    assert "\n" not in escaped
    for wrapper, tag in (("Outcome: {}", "p"), ("- {}", "li"), ("## {}", "h2"), ("{}", "p")):
        html = as_html(wrapper.format(escaped))
        own = html.count(f"<{tag}>")
        assert own == 1, html
        others = FORBIDDEN_TAGS.findall(
            outside_code(html).replace(f"<{tag}>", "").replace(f"</{tag}>", "")
        )
        assert others == ([] if tag != "li" else ["ul"]), html
        assert no_autolink_seed(html), html
        assert shown(wrapper.format(escaped)).strip().endswith(flat(hostile).strip())


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_table_cell_holds_its_text_and_nothing_else(hostile: str) -> None:
    html = as_html(markdown.table(["left", "right"], [[hostile, "next"], [None, 3]]))
    cells = re.findall(r"<td>(.*?)</td>", html, re.S)
    assert len(cells) == 4, html
    assert text_of(cells[0]) == flat(hostile).strip() and cells[1] == "next"
    assert cells[2:] == ["", "3"]
    assert FORBIDDEN_TAGS.findall(outside_code(html).replace("<table>", "")) == []
    assert no_autolink_seed(html)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_code_span_shows_its_text_verbatim_also_in_a_table(hostile: str) -> None:
    html = as_html(f"see {markdown.code(hostile)} here")
    assert html.count("<code>") == 1
    (content,) = re.findall(r"<code>(.*?)</code>", html, re.S)
    assert text_of(content).strip() == flat(hostile).strip()
    row = f"| h | i |\n|---|---|\n| {markdown.code(hostile, in_table=True)} | x |"
    cells = re.findall(r"<td>(.*?)</td>", as_html(row), re.S)
    assert len(cells) == 2 and cells[1] == "x"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_code_block_cannot_be_closed_by_its_text(hostile: str) -> None:
    html = as_html(markdown.block(hostile + "\n```\n~~~") + "\n\n# after")
    assert html.count("<pre>") == 1 and html.count("<h1>") == 1
    (content,) = re.findall(r"<pre><code[^>]*>(.*?)</code></pre>", html, re.S)
    assert text_of(content).endswith("```\n~~~\n")
    with pytest.raises(ValueError):
        markdown.block("x", "json\n# heading")


def test_paragraphs_keep_their_lines_and_nothing_else() -> None:
    answer = "\n".join(HOSTILE) + "\n\nA second paragraph with [a link](http://evil)."
    html = as_html(markdown.paragraphs(answer))
    assert html.count("<p>") == 2
    assert html.count("<br />") >= len("\n".join(HOSTILE).splitlines()) - 1
    without_breaks = outside_code(html).replace("<br />", "").replace("<p>", "").replace("</p>", "")
    assert FORBIDDEN_TAGS.findall(without_breaks) == [] and no_autolink_seed(html)
    assert "[a link](http://evil)" in shown(markdown.paragraphs(answer))


def test_empty_and_odd_values() -> None:
    assert markdown.text("") == "" and markdown.cell(None) == ""
    assert markdown.text(42) == "42" and markdown.text(1.5) == "1\\.5"
    assert as_html(f"x {markdown.code('')} y").count("<code>") == 1
    assert markdown.code("``") == "``` `` ```"


# ── the reports ─────────────────────────────────────────────────────────────────────────────────

ANSWER = "\n".join(HOSTILE)
ONE_LINE = " ".join(HOSTILE)


def _page_structure(page: str) -> tuple[list[str], list[str]]:
    """The headings of a rendered page and the sources of its images."""
    html = as_html(page)
    assert "<a " not in html and "<script" not in html, html
    headings = [text_of(h) for h in re.findall(r"<h[1-6]>(.*?)</h[1-6]>", html)]
    images = re.findall(r'<img src="([^"]*)"', html)
    return headings, images


def _hostile_ops(settings: Settings) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    ops = [
        Op(
            timestamp=now,
            endpoint=f"ep {n} {ONE_LINE}",
            input_summary=ONE_LINE,
            success=n == 0,
            duration_ms=5,
            output_summary=ANSWER,
            error=None if n == 0 else ANSWER,
        )
        for n in range(3)
    ]
    settings.layout.ops_path.parent.mkdir(parents=True)
    settings.layout.ops_path.write_bytes(b"".join(op.to_line() + b"\n" for op in ops * 3))


@pytest.mark.parametrize("kind", ["llm", "degraded"])
def test_an_analysis_report_shows_hostile_failures_answers_and_errors_as_text(
    settings: Settings, kind: str
) -> None:
    _hostile_ops(settings)
    selection = analysis.select(settings, AnalyzeParameters())
    entry = LogEntry(operation=ONE_LINE, approach=ONE_LINE, result=ANSWER, context=ANSWER)
    diagnosis = analysis.Diagnosis(
        kind=kind,
        message=ONE_LINE,
        entry=entry,
        text=ANSWER,
        llm_error=ANSWER,  # type: ignore[arg-type]
    )
    report = AnalysisReport(
        selection=selection, diagnosis=diagnosis, delivery=f"NOT delivered: {ANSWER}"
    )
    headings, images = _page_structure(report.markdown())
    diagnosis_title = "Diagnosis" if kind == "llm" else "Degraded report (counts only)"
    assert headings == [
        "Error analysis",
        "Failures per day",
        "Groups",
        diagnosis_title,
        "/log entry",
    ]
    assert len(images) == 2 and all(src.startswith("data:image/svg+xml;base64,") for src in images)
    assert flat(ONE_LINE) in shown(report.markdown())


def test_a_playbook_report_shows_hostile_endpoints_and_failures_as_text(settings: Settings) -> None:
    _hostile_ops(settings)
    playbook = build_playbook(settings, ConsolidateParameters(min_successes_per_endpoint=1))
    report = ConsolidationReport.planned(playbook, dry_run=False)
    for planned in playbook.to_post:
        report.status[planned.evidence.endpoint] = f"failed: {ANSWER}"
    headings, images = _page_structure(report.markdown())
    assert headings == ["Playbook changes", "Success rate", "Latency"]
    assert len(images) == 2


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))))
def test_plain_undoes_text_for_the_console(value: str) -> None:
    assert markdown.plain(markdown.text(value)) == flat(value).strip()
