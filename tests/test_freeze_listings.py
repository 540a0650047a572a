"""The listings (the feed, the catalogue and their .gz) over many builds: each build's bytes are
a fresh build's, and bytes a client is still receiving are never written over."""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import socket
from pathlib import Path

import pytest

from tests.test_freeze import CHUNKED_SEED, LISTING_FILES, contents, execute
from webapp.db import get_database
from webapp.db.seed import seed
from webapp.freeze import freeze


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "site" / "build"


def edit_title(app, title: str, number: int) -> None:
    execute(app, "UPDATE episodes SET title = %s WHERE number = %s", (title, number))


def test_a_listing_sent_with_sendfile_is_received_as_it_was_sent(empty_app, dest):
    """nginx sends the feed with sendfile(2) and closes the file once the socket has taken the
    last of it: the socket then holds the page cache's pages, not copies. Two builds later
    (the tree it came from is the spare again) a slow client still receives those bytes."""
    app = empty_app
    with get_database(app).session() as session:
        seed(session, CHUNKED_SEED)
    freeze(app, dest)
    for title in ("Same length A", "Same length B"):
        edit_title(app, title, 130)
        freeze(app, dest)
    feed = dest.resolve() / "episodes/rss.xml"
    sent = feed.read_bytes()
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        connection, _ = server.accept()
        with client, connection:
            connection.setblocking(False)
            with feed.open("rb") as file:
                queued = 0
                with contextlib.suppress(BlockingIOError):
                    while queued < len(sent):
                        queued += os.sendfile(
                            connection.fileno(), file.fileno(), queued, len(sent) - queued
                        )
            assert queued > 0
            # A title that moves every later byte, then one that shortens the feed: the second
            # build writes the tree the feed was sent from.
            for title, number in [
                ("A title long enough to move every later byte", 250),
                ("Short", 20),
            ]:
                edit_title(app, title, number)
                freeze(app, dest)
            received = b""
            client.settimeout(5)
            while len(received) < queued:
                received += client.recv(1 << 20)
    assert received == sent[:queued]


def test_listings_rebuilt_over_random_edits_and_deletes_are_a_fresh_build(
    empty_app, dest, tmp_path: Path
):
    """Edits of any length (hostile text included) and deletes, build after build: every file
    is what a build from scratch makes, and each listing's .gz decompresses to it."""
    app = empty_app
    with get_database(app).session() as session:
        seed(session, CHUNKED_SEED)
    freeze(app, dest)
    rng = random.Random(7)
    for step in range(12):
        for _ in range(rng.randint(1, 3)):
            title = "T" * rng.randint(1, 80) + ' "q" \\ \u2028 <&>'
            edit_title(app, title, rng.randint(1, CHUNKED_SEED))
        if step % 4 == 3:
            execute(app, "DELETE FROM episodes WHERE number = %s", (rng.randint(1, CHUNKED_SEED),))
        freeze(app, dest)
        fresh = freeze(app, tmp_path / f"fresh-{step}" / "build").destination
        assert contents(dest) == contents(fresh), step
        for path in LISTING_FILES:
            assert gzip.decompress((dest / f"{path}.gz").read_bytes()) == (dest / path).read_bytes()
