"""Test certificates made with openssl: a CA and what it signs."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(root: Path) -> Path:
    """In *root*: a CA (``ca.pem``), a server certificate for 127.0.0.1 and a client one.

    ``server.pem``/``server.key`` and ``client.pem``/``client.key``, both signed by the CA.
    """
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(root / "ca.key"),
        "-out",
        str(root / "ca.pem"),
    )
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(root / f"{name}.key"),
            "-out",
            str(root / f"{name}.csr"),
        )
        openssl(
            "x509",
            "-req",
            "-in",
            str(root / f"{name}.csr"),
            "-CA",
            str(root / "ca.pem"),
            "-CAkey",
            str(root / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(root / "san.cnf"),
            "-out",
            str(root / f"{name}.pem"),
        )
    return root
