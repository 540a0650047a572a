r"""A tiny HTML builder that escapes everything it is not told is markup.

>>> str(element("a", "<b>", href="/x?a=1&b=2"))
'<a href="/x?a=1&amp;b=2">&lt;b&gt;</a>'
>>> str(element("td", element("code", "select 1")))
'<td><code>select 1</code></td>'

Data for a script goes in as JSON that cannot end its ``<script>`` element::

    >>> print(json_for_script('{"path": "</script><script>alert(1)//"}'))
    {"path": "\u003c/script\u003e\u003cscript\u003ealert(1)//"}
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable
from string import Template

_VOID = frozenset({"br", "input", "meta"})

_PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1rem 2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}
th,td{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px/1.4 ui-monospace,monospace;white-space:pre-wrap}
nav a,form button{margin-right:1rem}
iframe{width:100%;height:80vh;border:1px solid #ddd}
</style>
</head>
<body>
$body
</body>
</html>
"""
)


class Markup(str):
    """Text that is already HTML and must not be escaped again."""


def escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


# Outside its strings a JSON text has none of these characters, so replacing them
# everywhere is exact. "<" alone would keep "</script>" and "<!--" out; ">" and "&"
# too for any HTML context, and U+2028/2029 because older JavaScript parsers
# end a string literal at them (Jinja's htmlsafe_json_dumps, Django's json_script).
# str.replace, not str.translate, which looks every character up in a dict.
_JSON_FOR_SCRIPT = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def json_for_script(json_text: str) -> str:
    """A JSON text made safe to place inside ``<script>``: the same value for ``JSON.parse``."""
    for character, escaped in _JSON_FOR_SCRIPT:
        json_text = json_text.replace(character, escaped)
    return json_text


def script_hash(source: str) -> str:
    """The Content-Security-Policy source (``'sha256-…'``) that lets this inline script run."""
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def join(parts: Iterable[object]) -> Markup:
    return Markup("".join(escape(part) for part in parts))


def element(tag: str, /, *children: object, **attributes: object) -> Markup:
    """``<tag attributes>children</tag>``; ``class_`` stands for ``class``.

    An attribute set to True is written bare; None or False leaves it out.
    """
    attrs = []
    for key, value in attributes.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        attrs.append(f" {key}" if value is True else f' {key}="{escape(value)}"')
    start = f"<{tag}{''.join(attrs)}>"
    if tag in _VOID:
        return Markup(start)
    return Markup(f"{start}{join(children)}</{tag}>")


def table(
    head: Iterable[object] | None,
    rows: Iterable[Iterable[object]],
    numeric: frozenset[int] = frozenset(),
) -> Markup:
    """A table, with a header row unless ``head`` is None.

    The columns whose index is in ``numeric`` are right-aligned.
    """

    def row(cell_tag: str, cells: Iterable[object]) -> Markup:
        return element(
            "tr",
            *(
                element(cell_tag, cell, class_="n" if index in numeric else None)
                for index, cell in enumerate(cells)
            ),
        )

    thead = "" if head is None else element("thead", row("th", head))
    return element("table", thead, element("tbody", *(row("td", r) for r in rows)))


def page(title: str, *body: object) -> str:
    """A complete HTML5 document."""
    return _PAGE.substitute(title=escape(title), body=join(body))
