"""Reading request parameters strictly: a malformed value is a 400 with a reason; a path
holds a number only as the site writes it (:class:`CanonicalInteger`); If-Match is judged as
RFC 9110 says (:func:`if_match_fails`).

page = int_arg("page", default=1, minimum=1, maximum=10_000)
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

from flask import abort, request
from markupsafe import Markup
from werkzeug.routing import IntegerConverter
from werkzeug.wrappers import Response as BaseResponse

_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


class CanonicalInteger(IntegerConverter):
    """``<int:...>`` in the site's routes: ASCII digits without a leading zero, as ``url_for``
    writes them. Werkzeug's matches any Unicode digit and leading zeros, so /api/episodes/010
    and /api/episodes/１０ (full-width) answered as /api/episodes/10: one resource under many
    URLs, each cached apart. Those are 404s now."""

    # Grouped: Werkzeug writes ``signed=True`` as "-?" + regex, which must cover both branches.
    regex = r"(?:0|[1-9][0-9]*)"


def single_arg(name: str) -> str | None:
    """The one value of query parameter ``name``, or None; repeating it is a 400."""
    values = request.args.getlist(name)
    if len(values) > 1:
        abort(400, description=f"'{name}' was given {len(values)} times; give it once")
    return values[0] if values else None


def int_arg(name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = single_arg(name)
    if raw is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(raw):
        abort(400, description=f"'{name}' must be a whole number from {minimum} to {maximum}")
    value = int(raw)
    if not minimum <= value <= maximum:
        abort(400, description=f"'{name}' must be from {minimum} to {maximum}, not {value}")
    return value


#: What no HTML document may hold: controls other than ASCII whitespace, and noncharacters
#: (the HTML standard's input stream rules; the Nu Html Checker rejects a page with one).
#: Beyond the BMP only the last two code points of each plane are, which a character class
#: of those 32 makes Python's re test one by one on every character (7 times slower on
#: text without any): the class takes every code point there, and _html_character decides.
_NOT_IN_HTML = re.compile(
    "[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff\U00010000-\U0010ffff]"
)


def _html_character(found: re.Match[str]) -> str:
    character = found.group()
    if character >= "\U00010000" and ord(character) & 0xFFFE != 0xFFFE:
        return character  # an emoji, a CJK extension ...: not a noncharacter
    return "\ufffd"


def html_value(value: object) -> object:
    """Jinja's ``finalize``: every value a template prints, with what HTML forbids as U+FFFD.

    Titles, summaries, transcripts, guest names, chapter titles and show notes come from
    whatever writes the database, and search text from the request; one vertical tab (a word
    processor's line break) made the page invalid HTML. Here, where every printed value
    passes, none is missed. Escaping cannot help (``&#0;`` is as invalid), so each such code
    point is replaced, one for one, as a browser shows it: the text keeps its length and its
    word boundaries, and cleaned markup (the show notes) stays markup: U+FFFD cannot open or
    close a tag.
    """
    # isprintable() is false for every code point _NOT_IN_HTML replaces, and runs in C: most
    # values (a title, a number) pass on that alone.
    if isinstance(value, str) and not value.isprintable():
        cleaned = _NOT_IN_HTML.sub(_html_character, value)
        if cleaned != value:
            return Markup(cleaned) if isinstance(value, Markup) else cleaned
    return value


#: What no URL in an attribute may hold as it is (the URL standard's code points, as the Nu
#: Html Checker reads them): spaces, controls, quotes, brackets and the like. Percent-encoded,
#: each names the same resource, so the link still leads where the data says.
_NOT_IN_URL = re.compile(r'[\x00-\x20"<>\[\\\]^`{|}\x7f-\x9f]')
#: The same in a URL's authority, where an IPv6 address is written in brackets.
_NOT_IN_AUTHORITY = re.compile(r'[\x00-\x20"<>\\^`{|}\x7f-\x9f]')
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_TAB_OR_NEWLINE = re.compile("[\t\n\r]")
_C0_OR_SPACE = "".join(map(chr, range(0x21)))
#: The schemes a link or a source from the data may have; a URL without a scheme is a path.
_LINKED_SCHEMES = frozenset({"http", "https"})


def _percent_encoded(found: re.Match[str]) -> str:
    return quote(found.group(), safe="")


def page_url(url: str) -> str:
    """``url`` from the data, fit for a page's ``href`` or ``src``: percent-encoded where a
    URL may not hold a character as it is, and ``#`` (nowhere) if its scheme is not http(s).

    A ``javascript:`` audio URL was a link that ran script in a reader's browser (the
    show notes are cleaned of such links; this is the same rule for the other URLs). A path
    (a page's, from its slug) keeps every character, encoded.
    """
    # An absolute URL as a browser reads it: without leading and trailing controls and
    # spaces (an import's trailing newline), without tabs and newlines (" java\tscript:" is
    # javascript:), and, for http(s), with "\" read as "/".
    read = _TAB_OR_NEWLINE.sub("", url.strip(_C0_OR_SPACE))
    scheme = _SCHEME.match(read)
    if scheme is None:
        return _NOT_IN_URL.sub(_percent_encoded, url)
    if scheme.group(1).lower() not in _LINKED_SCHEMES:
        return "#"
    read = read.replace("\\", "/")
    authority = _AUTHORITY.match(read)
    head = "" if authority is None else authority.group()
    return _NOT_IN_AUTHORITY.sub(_percent_encoded, head) + _NOT_IN_URL.sub(
        _percent_encoded, read[len(head) :]
    )


def reject_undecodable_query_string() -> None:
    """A ``before_request`` hook: a query string that is not UTF-8 is a 400.

    Werkzeug would quietly replace the bad bytes with U+FFFD and search for
    that; saying what is wrong is more useful to whoever built the URL.
    """
    raw = request.environ.get("QUERY_STRING", "")
    if raw:
        try:
            # WSGI hands over the raw bytes decoded as latin-1 (PEP 3333).
            unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            abort(400, description="the query string is not valid UTF-8")


#: The reason a 412 gives when :func:`if_match_fails`: the API's and the podcast files' alike.
IF_MATCH_FAILED = "The answer has changed: its ETag is none of those If-Match names."


def if_match_fails(etag: str) -> bool:
    """Whether the request's If-Match names none of ``etag`` (an answer's, unquoted) and ``*``:
    RFC 9110 13.1.1, compared strongly, evaluated before If-None-Match."""
    return bool(request.if_match) and not request.if_match.contains(etag)


def answer_conditionally(response: BaseResponse) -> bool:
    """Give ``response`` a strong ETag of its body and answer the request's conditions: a 304
    when If-None-Match names it; False, for the caller's 412, when :func:`if_match_fails`.

    Werkzeug's ``make_conditional`` gets If-Match wrong ("*" fails; a false one keeps the
    answer's body under its 412; a true one hides a matching If-None-Match): it is judged here,
    and Werkzeug is handed the environ without it.
    """
    response.add_etag()
    if if_match_fails(response.get_etag()[0] or ""):
        return False
    environ = {key: value for key, value in request.environ.items() if key != "HTTP_IF_MATCH"}
    response.make_conditional(environ)
    return True
