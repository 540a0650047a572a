"""A GET in the uwsgi protocol, as nginx sends it: the tests ask a uWSGI socket directly."""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Mapping
from pathlib import Path

from .settings import StackError


def _packet(variables: Mapping[str, str]) -> bytes:
    # uwsgi packet: modifier1 0 (WSGI), the size of the vars block, modifier2 0; then each
    # variable as a little-endian 16-bit length and its bytes, name then value.
    body = b""
    for key, value in variables.items():
        for text in (key, value):
            data = text.encode("latin-1")
            body += struct.pack("<H", len(data)) + data
    return struct.pack("<BHB", 0, len(body), 0) + body


def uwsgi_get(socket_path: Path, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``path`` from a uWSGI socket: (status, the raw HTTP response)."""
    path_info, _, query = path.partition("?")
    packet = _packet(
        {
            "REQUEST_METHOD": "GET",
            "REQUEST_URI": path,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_SCHEME": "http",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "1",
            "HTTP_HOST": "localhost",
        }
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        connection.sendall(packet)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    match = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    if match is None:
        raise StackError(
            f"uWSGI at {socket_path} answered something that is not HTTP: {response[:80]!r}"
        )
    return int(match[1]), response
