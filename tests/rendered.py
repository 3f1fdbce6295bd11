"""Markdown as a reader sees it: rendered by a CommonMark parser with GitHub's tables (markdown-it,
which rich already brings), for tests that check what a page shows rather than its source."""

from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

_PARSER = MarkdownIt("commonmark").enable("table")
# Every URL kept (the parser's default drops some, `data:image/svg+xml` among them): a link or an
# image that forms at all shows up as one.
_PARSER.validateLink = lambda url: True  # type: ignore[method-assign]
_TAG = re.compile(r"<[^>]+>")


def as_html(markdown: str) -> str:
    return _PARSER.render(markdown)


def shown(markdown: str) -> str:
    """The text a reader sees: tags dropped, entities decoded, each block on a line of its own."""
    return text_of(as_html(markdown))


def text_of(fragment: str) -> str:
    """The text of an HTML fragment: tags dropped, entities decoded."""
    return html.unescape(_TAG.sub("", fragment))
