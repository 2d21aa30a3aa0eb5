"""Liveness, readiness and the checks behind ``/readyz``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.api.context import ReadinessCheck
from dicomnode.store.files import TMP


def database_check(sessions: sessionmaker[Session]) -> ReadinessCheck:
    """Ready when the job database answers ``SELECT 1``."""

    def check() -> tuple[bool, str]:
        try:
            with sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "not reachable"
            return False, f"the job database does not answer: {type(exc).__name__}"
        return True, "the job database answers"

    return check


def storage_check(root: Path) -> ReadinessCheck:
    """Ready when a file can be created, written, fsynced and removed under ``root/tmp``."""

    def check() -> tuple[bool, str]:
        folder = root / TMP
        probe = folder / f"readyz-{uuid.uuid4().hex}.part"  # *.part: cleared at start-up
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            return False, f"storage at {root} is not writable: {exc.strerror or exc}"
        return True, f"storage at {root} is writable"

    return check
