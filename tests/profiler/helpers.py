"""Tiny real WSGI apps and a server-like way to call them."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple

from request_profiler import DirectoryStore
from request_profiler.writer import flush_all
from werkzeug.test import EnvironBuilder

SECRET = "test-secret-0f6c2a91d4-a-32-byte-minimum"
#: Another valid secret: tokens it signs are forgeries to a middleware with SECRET.
OTHER_SECRET = "another-secret-2b7e15c9-a-32-byte-minimum"


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("X-App", "hello")])
    return [b"hello ", environ["PATH_INFO"].encode("latin-1")]


#: How long busy_app's /busy and /stream keep the CPU busy.
BUSY_SECONDS = 0.03


def spin(seconds: float) -> int:
    """Python work for ``seconds``: what a profile's samples must find."""
    deadline = time.perf_counter() + seconds
    turns = 0
    while time.perf_counter() < deadline:
        turns += sum(range(50))
    return turns


def busy_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/busy`` spins for BUSY_SECONDS, ``/stream`` streams three chunks spinning before
    each, anything else answers at once."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    path = environ["PATH_INFO"]
    if path == "/stream":
        return _spun_chunks()
    if path == "/busy":
        spin(BUSY_SECONDS)
    return [b"done ", path.encode("latin-1")]


def _spun_chunks() -> Iterable[bytes]:
    for chunk in (b"a", b"b", b"c"):
        spin(BUSY_SECONDS / 3)
        yield chunk


class Result(NamedTuple):
    status: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


def environ_for(path: str = "/", **builder_options: Any) -> dict[str, Any]:
    """A WSGI environ as a server would build it (werkzeug's EnvironBuilder)."""
    return EnvironBuilder(path=path, **builder_options).get_environ()


def run(app: Callable[..., Iterable[bytes]], path: str = "/", **builder_options: Any) -> Result:
    """Call a WSGI app like a server: start_response, iterate, close."""
    response: dict[str, Any] = {}

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        response["status"], response["headers"] = status, headers
        return response.setdefault("written", []).append

    body = app(environ_for(path, **builder_options), start_response)
    try:
        chunks = list(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    # Profiles are stored on the writers' threads: wait for them, as the viewer does.
    assert flush_all(), "the profile writers did not finish within 5 s"
    return Result(
        response["status"], response["headers"], b"".join(response.get("written", []) + chunks)
    )


def stored(store_dir: Path) -> list[dict[str, Any]]:
    """The metadata of the profiles in ``store_dir``, newest first (once the writers are done)."""
    assert flush_all(), "the profile writers did not finish within 5 s"
    return DirectoryStore(store_dir).recent()


class _TagBalance(HTMLParser):
    VOID = {"meta", "input", "br", "link", "img", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"unexpected </{tag}>")


def assert_html5_document(text: str) -> None:
    """A doctype, a title, and every element closed in order (our pages close all)."""
    assert text.startswith('<!DOCTYPE html>\n<html lang="en">')
    assert "<title>" in text and '<meta charset="utf-8">' in text
    checker = _TagBalance()
    checker.feed(text)
    checker.close()
    assert checker.problems == [] and checker.open == []


def inline_scripts(html: str) -> list[str]:
    """The source of every script element that runs (data blocks excluded)."""
    found = re.findall(r"<script(\s[^>]*)?>(.*?)</script>", html, flags=re.S | re.I)
    return [source for attributes, source in found if "application/json" not in attributes]


def script_sources(policy: str) -> list[str]:
    """The sources of a Content-Security-Policy's script-src directive."""
    for directive in policy.split(";"):
        name, *sources = directive.split()
        if name == "script-src":
            return sources
    raise AssertionError(f"no script-src in {policy!r}")


def assert_runs_only_its_own_scripts(html: str, policy: str) -> None:
    """The policy names exactly the page's inline scripts, by hash, and allows nothing else."""
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()}'"
        for source in inline_scripts(html)
    ]
    assert hashes, "the page runs no script"
    assert sorted(script_sources(policy)) == sorted(hashes)
    assert "unsafe" not in " ".join(script_sources(policy))
