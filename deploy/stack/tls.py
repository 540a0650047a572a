"""A throwaway self-signed certificate, for the local HTTPS server and the tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .settings import StackError

#: An ECDSA P-256 key, unencrypted, and a certificate valid 30 days.
OPENSSL_REQ = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30".split()


def make_self_signed_certificate(
    directory: Path, hostnames: Sequence[str] = ("localhost",)
) -> tuple[Path, Path]:
    """A certificate for ``hostnames`` and 127.0.0.1, and its key: (cert.pem, key.pem)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError("openssl is not installed: it is needed to make a self-signed certificate")
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / "cert.pem", directory / "key.pem"
    names = ",".join([f"DNS:{name}" for name in hostnames] + ["IP:127.0.0.1"])
    subprocess.run(
        [
            openssl,
            *OPENSSL_REQ,
            "-keyout",
            str(key),
            "-out",
            str(certificate),
            "-subj",
            f"/CN={hostnames[0]}",
        ]
        + ["-addext", f"subjectAltName={names}"],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return certificate, key
