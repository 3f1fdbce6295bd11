r"""Markdown around text from outside: the one place that escapes what goes into an artifact.

Both Prefect UIs render an artifact's markdown, and its description, in GitHub's dialect, and both
let links, images and HTML through (the new UI drops scripts only; the old one nothing). Event
fields, error texts, corrections, LLM answers, gateway errors and run parameters are not ours, so
every such text enters markdown through one of these, never by plain interpolation:

- `text(s)`: inline text (a paragraph, a list item, a heading, a description), on one line;
- `cell(s)`: a table cell (the same, `|` included);
- `code(s)`: an inline code span that the text cannot close (`in_table=True` inside a cell);
- `block(s, info)`: a fenced code block that the text cannot close;
- `paragraphs(s)`: prose of several lines (an LLM's answer), line breaks kept;
- `table(columns, rows)`: a GFM table of escaped cells;
- `plain(s)`: the other way, what a line of `text` shows (for a console).

The rule behind `text` is CommonMark's own: any ASCII punctuation character may be backslash-escaped
and then stands for itself. Escaping every one of them leaves no link, image, emphasis, HTML tag,
entity, heading, list, quote or table pipe for a hostile string to form; the page shows the
characters as written. GitHub's autolinks are another matter: the new UI (remark-gfm) looks for
`www.…`, `http://…` and `a@b.c` in the text *after* parsing, escapes undone, so a word holding one
is put in a code span instead, which that search leaves alone (and shows the word verbatim, in
monospace). Line breaks become spaces (a new line could start a heading or a block), and control
and bidi characters, which could hide or reorder what a reader sees, U+FFFD.

    text("[x](http://evil) # hi")  ->  `[x](http://evil)` \# hi
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
#: C0 and C1 controls but the tab, DEL, and the bidi embeddings, overrides and isolates.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff]")
_LINE_BREAKS = re.compile("\r\n|[\r\n\u2028\u2029\x85]")
_BACKTICKS = re.compile("`+")
_INFO = re.compile(r"[a-z0-9+-]*")
_WORDS = re.compile(r"(\s+)")
#: What GitHub's autolinks grow from: `www.`, `scheme://`, `mailto:`, `xmpp:`, an `@` (e-mail).
_LINK_LIKE = re.compile(r"(?i)www\.|://|mailto:|xmpp:|@")
REPLACEMENT = "\ufffd"


def _visible(value: object) -> str:
    return _HIDDEN.sub(REPLACEMENT, str(value).replace("\t", " "))


def _one_line(value: object) -> str:
    """On one line, without the leading and trailing spaces (which could make a code block)."""
    return _visible(_LINE_BREAKS.sub(" ", str(value))).strip()


def text(value: object, *, in_table: bool = False) -> str:
    """`value` as inline markdown that shows exactly its characters, on one line. A word that a
    GitHub renderer would turn into a link even with its punctuation escaped (the new UI finds
    `www.…`, `scheme://…` and `a@b.c` in the text after parsing) becomes a code span, which that
    search leaves alone. `in_table`: inside a table cell (see `code`)."""
    parts = []
    for word in _WORDS.split(_one_line(value)):
        if _LINK_LIKE.search(word):
            parts.append(code(word, in_table=in_table))
        else:
            parts.append("".join("\\" + c if c in _ASCII_PUNCTUATION else c for c in word))
    return "".join(parts)


def cell(value: object) -> str:
    """A table cell showing `value` as written (`__proto__` is not bold "proto", `|` no column);
    None is an empty cell."""
    return "" if value is None else text(value, in_table=True)


def code(value: object, *, in_table: bool = False) -> str:
    """An inline code span showing `value` verbatim: fenced by one backtick more than its longest
    run, padded when it starts or ends with a backtick. In a table cell (`in_table`) its pipes are
    escaped too, which GitHub's tables require even inside code."""
    content = _one_line(value)
    if not content:
        return "` `"
    fence = "`" * (1 + max((len(run) for run in _BACKTICKS.findall(content)), default=0))
    if content.startswith(("`", " ")) or content.endswith(("`", " ")):
        content = f" {content} "
    if in_table:
        content = content.replace("|", "\\|")
    return f"{fence}{content}{fence}"


def block(value: object, info: str = "") -> str:
    """A fenced code block of `value` (its lines kept) that nothing in it can close; `info` names
    the language and is ours (`json`), never outside text."""
    if not _INFO.fullmatch(info):
        raise ValueError(f"a code block's info string is a plain language name, got {info!r}")
    content = _visible(_LINE_BREAKS.sub("\n", str(value)))
    fence = "`" * max(3, 1 + max((len(run) for run in _BACKTICKS.findall(content)), default=0))
    return f"{fence}{info}\n{content.rstrip(chr(10))}\n{fence}"


def paragraphs(value: object) -> str:
    """Prose of several lines: each line as `text`, a blank line between paragraphs kept, other
    line breaks kept as hard breaks (a backslash at the end of a line)."""
    result: list[str] = []
    lines: list[str] = []
    for line in _LINE_BREAKS.split(str(value)):
        if line.strip():
            lines.append(text(line.strip()))
            continue
        if lines:
            result.append("\\\n".join(lines))
            lines = []
    if lines:
        result.append("\\\n".join(lines))
    return "\n\n".join(result)


def plain(value: str) -> str:
    """What one line of `text` shows, for a console: its escapes and code spans undone."""
    shown, i = [], 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value) and value[i + 1] in _ASCII_PUNCTUATION:
            shown.append(value[i + 1])
            i += 2
            continue
        if char == "`":
            fence = _BACKTICKS.match(value, i).group()  # type: ignore[union-attr]
            end = value.find(fence, i + len(fence))
            while end >= 0 and value[end + len(fence) : end + len(fence) + 1] == "`":
                end = value.find(fence, end + len(fence) + 1)
            if end >= 0:
                inner = value[i + len(fence) : end]
                if inner.startswith(" ") and inner.endswith(" ") and inner.strip():
                    inner = inner[1:-1]
                shown.append(inner)
                i = end + len(fence)
                continue
        shown.append(char)
        i += 1
    return "".join(shown)


def table(columns: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub table: a header of `columns`, then `rows`, every cell escaped."""
    lines = [_row(columns), "|" + "---|" * len(columns)]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


def _row(values: Sequence[object]) -> str:
    return "| " + " | ".join(cell(value) for value in values) + " |"
