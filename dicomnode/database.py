"""Engine and sessions for the job database (SQLite by default, PostgreSQL in production).

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives a
crash of the node process (it is in the WAL), and received files are fsynced
before their row is written, so a power cut can at most lose index rows of
files that are on disk; :meth:`dicomnode.store.InstanceStore.reindex_orphans` restores them
at start-up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine for *url*, creating the SQLite file's folder if needed."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Receiver threads share the pool; each session uses its own connection.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        kwargs["pool_size"] = 20
        kwargs["max_overflow"] = 20
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so
        # "BEGIN IMMEDIATE" can take the write lock for job claims.
        event.listen(engine, "connect", _disable_pysqlite_begin)
        event.listen(engine, "begin", _emit_begin)
        return engine
    kwargs["pool_pre_ping"] = True
    kwargs["pool_size"] = 10
    kwargs["max_overflow"] = 20
    return create_engine(url, **kwargs)


def _disable_pysqlite_begin(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _emit_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker that keeps loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction holds the write lock from its first statement.

    On SQLite this is ``BEGIN IMMEDIATE``, so read-then-update sequences (job
    claims) cannot interleave between processes. On PostgreSQL it is an
    ordinary transaction; callers there use ``FOR UPDATE SKIP LOCKED``.
    """
    with factory() as session:
        session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str) -> Any:
    """An Alembic Config pointing at the packaged migrations and *url*."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class SchemaError(Exception):
    """The database's schema is not the one this dicomnode needs; the message says what to run."""


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def head_revision() -> str:
    """The schema revision this version of dicomnode needs (the newest migration)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "the packaged migrations have a head"
    return head


def _known_revision(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return (
            ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision)
            is not None
        )
    except CommandError:
        return False


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database (None: no dicomnode schema)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_current_schema(url: str) -> None:
    """Refuse a database whose schema is missing or older than this dicomnode's, changing nothing.

    Read-only commands (``jobs list``, ``studies list``, ...) and scale-out
    workers call this instead of migrating: only ``dicomnode db upgrade`` and
    ``dicomnode serve`` change the schema. A SQLite file that does not exist is
    not created.

    Raises
    ------
    SchemaError
        With a sentence naming the database and the command that fixes it.
    """
    parsed = make_url(url)
    sqlite_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (
        None,
        "",
        ":memory:",
    )
    if sqlite_file and not Path(str(parsed.database)).exists():
        raise SchemaError(
            f"no database at {_shown(url)}: start `dicomnode serve` or run "
            "`dicomnode db upgrade` first"
        )
    engine = make_engine(url)
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        first = (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0]
        raise SchemaError(f"cannot read the database at {_shown(url)}: {first}") from None
    finally:
        engine.dispose()
    head = head_revision()
    if current is not None and current != head and not _known_revision(current):
        raise SchemaError(
            f"the database at {_shown(url)} has schema revision {current}, which this dicomnode "
            f"does not know (it needs {head}): a newer dicomnode migrated it"
        )
    if current is None:
        raise SchemaError(
            f"the database at {_shown(url)} has no dicomnode schema: run `dicomnode db upgrade`"
        )
    if current != head:
        raise SchemaError(
            f"the database at {_shown(url)} has schema revision {current}, this dicomnode needs "
            f"{head}: run `dicomnode db upgrade` (or restart `dicomnode serve`)"
        )


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the schema migrations to the database at *url*."""
    from alembic import command

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
