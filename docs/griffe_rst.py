"""A griffe extension for the API reference: the reStructuredText bits of lrfree's
docstrings, rewritten as the Markdown the site renders.

The docstrings are Google style (``Args:``) with a few reST constructs that read well in
``help()``: ``.. math::`` blocks, ``:math:`...``` and ``:class:`...``` roles, and ``Text::``
before a literal block. Markdown would show them raw (and treat ``_`` in formulas as
emphasis), so before rendering: each paragraph of a ``.. math::`` block becomes a ``$$``
block and ``:math:`x``` becomes ``$x$`` (both typeset by pymdownx.arithmatex), other roles
become code spans, and ``::`` before a literal block becomes ``:``.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

MATH_ROLE = re.compile(r":math:`([^`]+)`")
OTHER_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):`~?([^`]+)`")
LITERAL_MARKER = re.compile(r"(\S)::$")


def _math_blocks(lines: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != ".. math::":
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        i += 1
        paragraphs, current = [], []
        # the block is every following line that is blank or indented deeper
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            if lines[i].strip():
                current.append(lines[i].strip())
            elif current:
                paragraphs.append(current)
                current = []
            i += 1
        if current:
            paragraphs.append(current)
        for paragraph in paragraphs:
            out.extend([indent + "$$", *(indent + part for part in paragraph), indent + "$$", ""])
    return out


def rst_to_markdown(text: str) -> str:
    lines = _math_blocks(text.splitlines())
    lines = [LITERAL_MARKER.sub(r"\1:", line) for line in lines]
    text = "\n".join(lines)
    text = MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return OTHER_ROLE.sub(lambda m: f"`{m.group(1)}`", text)


class RestToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
