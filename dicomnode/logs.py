"""Structured logs: one JSON object per line on stderr.

Fields: ``ts``, ``level``, ``logger``, ``msg`` plus whatever the call passed in
``extra`` (job id, study UID, AE titles, ...). Patient names, IDs and birth
dates are never passed to a logger: PHI stays in the database.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON lines (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dicomnode", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    handler._dicomnode = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO; keep its warnings only.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # Alembic narrates its plugin set-up each time a revision is read (schema checks).
    logging.getLogger("alembic.runtime.plugins").setLevel(max(logging.WARNING, root.level))
    # highdicom narrates every module it copies (a dozen lines per result object);
    # the job's timeline already says what was written.
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, root.level))
    # Even at DEBUG: SQLAlchemy would log SQL parameters (patient names on their way
    # into the index), pydicom element values, httpx request headers (bearer tokens).
    for name in ("sqlalchemy", "pydicom", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
