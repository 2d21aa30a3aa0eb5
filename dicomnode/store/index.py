"""The index rows of received instances: studies, series and instances tables.

One write transaction per instance (SQLite: ``BEGIN IMMEDIATE``, so the
read-then-write below cannot deadlock on a lock upgrade). Any arrival
re-opens its study for assembly (unless a job is retrieving it or its
retrieve stopped part way: see :class:`~dicomnode.models.StudyStatus`) and counts in ``times_received``; a SOP
Instance UID stored under another series, or a series under another study,
is a :class:`~dicomnode.store.errors.UIDClash`.

The statements are SQLAlchemy Core, built from the tables of
:mod:`dicomnode.models` (one schema, the one Alembic migrates), but compiled
once per dialect and executed on the pooled DBAPI connection: this is the
ingest hot path, and Core's per-execution work (execution context, events,
result objects) costs more than the SQL itself here: ``Connection.execute``
made an index call about three times slower (0.7 ms against 0.25 ms). The
column types still convert the values (:class:`~dicomnode.models.UTCDateTime`
timestamps, JSON attributes), through their bind processors for the dialect.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, case, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TypeEngine

from dicomnode.locks import HostLock
from dicomnode.models import Instance, Series, Study, StudyStatus, UTCDateTime, utcnow
from dicomnode.store.errors import UIDClash
from dicomnode.store.header import InstanceHeader, int_or_none

# The mapped classes' tables (typed as FromClause by the ORM; they are Tables).
_STUDIES = cast(Table, Study.__table__)
_SERIES = cast(Table, Series.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_RECEIVING = StudyStatus.RECEIVING.value
_HELD = (StudyStatus.RETRIEVING.value, StudyStatus.INCOMPLETE.value)  # see "study_touch"


@dataclass(frozen=True)
class Provenance:
    """Who sent an instance."""

    calling_aet: str | None = None
    called_aet: str | None = None
    host: str | None = None


def _statements(dialect_name: str) -> dict[str, ClauseElement]:
    """The index statements, with ``bindparam`` names as their parameters."""
    dialects = {"sqlite": sqlite, "postgresql": postgresql}
    if dialect_name not in dialects:
        raise ValueError(f"the index supports SQLite and PostgreSQL, not {dialect_name}")
    insert = dialects[dialect_name].insert
    now: BindParameter[datetime] = bindparam("now")
    return {
        "study_id": select(_STUDIES.c.id).where(_STUDIES.c.study_instance_uid == bindparam("uid")),
        # Another process may insert the same study first: keep its row, read its id.
        "study_insert": insert(_STUDIES)
        .values(
            study_instance_uid=bindparam("uid"),
            patient_id=bindparam("patient_id"),
            patient_name=bindparam("patient_name"),
            accession_number=bindparam("accession_number"),
            study_date=bindparam("study_date"),
            study_description=bindparam("study_description"),
            calling_aet=bindparam("calling_aet"),
            called_aet=bindparam("called_aet"),
            sender_host=bindparam("sender_host"),
            status=_RECEIVING,
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
        )
        .on_conflict_do_nothing(index_elements=[_STUDIES.c.study_instance_uid])
        .returning(_STUDIES.c.id),
        "series_row": select(_SERIES.c.id, _SERIES.c.study_id).where(
            _SERIES.c.series_instance_uid == bindparam("uid")
        ),
        "series_insert": insert(_SERIES)
        .values(
            study_id=bindparam("study_id"),
            series_instance_uid=bindparam("uid"),
            modality=bindparam("modality"),
            series_number=bindparam("series_number"),
            series_description=bindparam("series_description"),
            attributes=bindparam("attributes"),
            calling_aet=bindparam("calling_aet"),
            called_aet=bindparam("called_aet"),
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
        )
        .on_conflict_do_nothing(index_elements=[_SERIES.c.series_instance_uid])
        .returning(_SERIES.c.id, _SERIES.c.study_id),
        "instance_row": select(_INSTANCES.c.id, _INSTANCES.c.series_id).where(
            _INSTANCES.c.sop_instance_uid == bindparam("uid")
        ),
        # inline(): a plain INSERT, without the RETURNING of the new id PostgreSQL would add.
        "instance_insert": _INSTANCES.insert()
        .inline()
        .values(
            study_id=bindparam("study_id"),
            series_id=bindparam("series_id"),
            sop_instance_uid=bindparam("uid"),
            sop_class_uid=bindparam("sop_class_uid"),
            transfer_syntax_uid=bindparam("transfer_syntax_uid"),
            instance_number=bindparam("instance_number"),
            path=bindparam("path"),
            size_bytes=bindparam("size_bytes"),
            received_at=now,
            times_received=1,
        ),
        "instance_update": _INSTANCES.update()
        .where(_INSTANCES.c.id == bindparam("row_id"))
        .values(
            path=bindparam("path"),
            size_bytes=bindparam("size_bytes"),
            transfer_syntax_uid=bindparam("transfer_syntax_uid"),
            received_at=now,
            times_received=_INSTANCES.c.times_received + 1,
        ),
        "series_touch": _SERIES.update()
        .where(_SERIES.c.id == bindparam("row_id"))
        .values(instance_count=_SERIES.c.instance_count + bindparam("added"), last_received_at=now),
        # Any arrival re-opens the study for assembly, except while a job retrieves it
        # (that job, not assembly, decides when it is all here) or after its retrieve
        # stopped part way (late C-STOREs of the broken move must not get half a study
        # routed; a retry of the job completes it).
        "study_touch": _STUDIES.update()
        .where(_STUDIES.c.id == bindparam("row_id"))
        .values(
            instance_count=_STUDIES.c.instance_count + bindparam("added"),
            last_received_at=now,
            # (or_ rather than in_: an IN list compiles to an expanding parameter)
            status=case(
                (or_(*(_STUDIES.c.status == held for held in _HELD)), _STUDIES.c.status),
                else_=_RECEIVING,
            ),
        ),
    }


class _Compiled:
    """One statement compiled once for a dialect: its SQL and how to bind its parameters.

    Named parameters go through the bind processor of their column's type for
    the dialect, as ``Connection.execute`` would do, except those named in
    *prebound*: the caller binds them once for all the statements of a
    transaction (the arrival time, bound three times otherwise), and they must
    have the type given there. Literal values of the statement
    (``instance_count=0``) are bound here, once.
    """

    def __init__(
        self,
        statement: ClauseElement,
        dialect: Dialect,
        prebound: Mapping[str, type[TypeEngine[Any]]],
    ) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        if compiled.insert_prefetch or compiled.update_prefetch:
            # A Python-side column default would need a value per execution.
            columns = [c.name for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
            raise ValueError(f"give {', '.join(columns)} a value in the index statement")
        self.sql = compiled.string
        # The parameter names in placeholder order; None when the driver takes a dict.
        self.order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        self.fixed: dict[str, Any] = {}
        self.convert: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():  # name: as rendered in the SQL
            processor = _bind_processor(bind.type, dialect)
            if not bind.required:
                self.fixed[name] = processor(bind.effective_value)
            elif bind.key != name:
                raise ValueError(f"parameter {bind.key} is compiled as {name}; rename it")
            elif name in prebound:
                if not isinstance(bind.type, prebound[name]):
                    raise TypeError(f"parameter {name} is {bind.type!r}, not {prebound[name]}")
            elif processor is not _unchanged:
                self.convert[name] = processor

    def parameters(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DBAPI parameters for *values* (by parameter name; *values* may be changed)."""
        for name, convert in self.convert.items():
            values[name] = convert(values[name])
        if self.fixed:
            values.update(self.fixed)
        return values if self.order is None else tuple([values[name] for name in self.order])


def _unchanged(value: Any) -> Any:
    return value


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """How a value of *type_* is handed to the driver of *dialect* (identity when as is)."""
    processor = type_.dialect_impl(dialect).bind_processor(dialect)
    return _unchanged if processor is None else processor


class _BoundedCache(dict[str, Any]):
    """UID -> row id of committed rows; never renumbered, so entries never go stale."""

    limit = 20_000

    def put(self, key: str, value: Any) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value


def _sqlite_write_lock(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """One index writer at a time on a SQLite database, across threads and processes.

    SQLite has one writer at a time and its busy handler sleeps 1-100 ms when the
    lock is taken; queueing the node's own writers (threads, receiver processes)
    on a host lock wakes the next one at once.
    """
    database = engine.url.database
    if not database or database == ":memory:":
        return threading.Lock()
    return HostLock(Path(f"{database}-index.lock"))


class InstanceIndex:
    """Writes the index rows of stored instances.

    Parameters
    ----------
    engine
        Engine of the job database (SQLite or PostgreSQL).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._compiled = {
            name: _Compiled(statement, engine.dialect, prebound={"now": UTCDateTime})
            for name, statement in _statements(engine.dialect.name).items()
        }
        self._bind_time = _bind_processor(UTCDateTime(), engine.dialect)
        self._study_ids = _BoundedCache()
        self._series_ids = _BoundedCache()
        self._write_lock = _sqlite_write_lock(engine) if self._sqlite else contextlib.nullcontext()
        # What a refused row raises: the driver's errors here, SQLAlchemy's elsewhere.
        self.database_errors: tuple[type[Exception], ...] = (
            SQLAlchemyError,
            engine.dialect.loaded_dbapi.Error,
        )

    def record(
        self,
        header: InstanceHeader,
        relative: Path,
        size: int,
        transfer_syntax: str,
        provenance: Provenance,
        received_at: datetime | None = None,
    ) -> bool:
        """Record an instance in one write transaction; return whether it replaced a copy.

        Raises
        ------
        UIDClash
            When the instance or its series is already stored under another
            series or study; nothing is written.
        """
        # Bound once for the driver here: up to five statements below take it.
        now = self._bind_time(received_at or utcnow())
        with self._write_lock:
            with self._transaction() as cur:
                study_id = self._study_id(cur, header, provenance, now)
                series_id = self._series_id(cur, study_id, header, provenance, now)
                replaced = self._instance(
                    cur, study_id, series_id, header, relative, size, transfer_syntax, now
                )
            # Cached only once committed: the id of a rolled-back insert is given
            # to the next new row, and must not stay attached to this UID.
            self._study_ids.put(header.study_instance_uid, study_id)
            self._series_ids.put(header.series_instance_uid, (series_id, study_id))
        return replaced

    def known_sop_instance_uids(self) -> set[str]:
        """The SOP Instance UIDs that have a row."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(_INSTANCES.c.sop_instance_uid)).scalars())

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A DBAPI cursor in a write transaction, committed when the block succeeds.

        ``BEGIN IMMEDIATE`` is sent here rather than through ``engine.connect()``
        and the ``begin`` event of :mod:`dicomnode.database`: a Core connection
        around the cursor adds about 0.1 ms to every instance.
        """
        conn = self.engine.raw_connection()
        try:
            cur = conn.cursor()
            if self._sqlite:
                cur.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
            yield cur
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _run(self, cur: Any, name: str, **values: Any) -> None:
        statement = self._compiled[name]
        cur.execute(statement.sql, statement.parameters(values))

    def _one(self, cur: Any, name: str, **values: Any) -> Any:
        self._run(cur, name, **values)
        return cur.fetchone()

    def _study_id(self, cur: Any, header: InstanceHeader, prov: Provenance, now: Any) -> int:
        uid = header.study_instance_uid
        cached = self._study_ids.get(uid)
        if cached is not None:
            return int(cached)
        row = self._one(cur, "study_id", uid=uid)
        if row is None:
            info = header.study
            row = self._one(
                cur,
                "study_insert",
                uid=uid,
                patient_id=info.get("patient_id"),
                patient_name=info.get("patient_name"),
                accession_number=info.get("accession_number"),
                study_date=info.get("study_date"),
                study_description=info.get("study_description"),
                calling_aet=prov.calling_aet,
                called_aet=prov.called_aet,
                sender_host=prov.host,
                now=now,
            ) or self._one(cur, "study_id", uid=uid)  # no row back: another writer's won
        assert row is not None
        return int(row[0])

    def _series_id(
        self, cur: Any, study_id: int, header: InstanceHeader, prov: Provenance, now: Any
    ) -> int:
        uid = header.series_instance_uid
        row = self._series_ids.get(uid)
        if row is None:
            row = self._one(cur, "series_row", uid=uid)
        if row is None:
            attrs = header.series
            description = attrs.get("SeriesDescription")
            row = self._one(
                cur,
                "series_insert",
                study_id=study_id,
                uid=uid,
                modality=str(attrs.get("Modality", ""))[:16] or None,
                series_number=int_or_none(attrs.get("SeriesNumber")),
                series_description=str(description)[:64] if description is not None else None,
                attributes=attrs,
                calling_aet=prov.calling_aet,
                called_aet=prov.called_aet,
                now=now,
            ) or self._one(cur, "series_row", uid=uid)  # no row back: another writer's won
        assert row is not None
        if int(row[1]) != study_id:
            raise UIDClash(f"SeriesInstanceUID {uid} already belongs to another study")
        return int(row[0])

    def _instance(
        self,
        cur: Any,
        study_id: int,
        series_id: int,
        header: InstanceHeader,
        relative: Path,
        size: int,
        transfer_syntax: str,
        now: Any,
    ) -> bool:
        """Insert or update the instance row and count the arrival; whether it was a resend."""
        existing = self._one(cur, "instance_row", uid=header.sop_instance_uid)
        if existing is not None and existing[1] != series_id:
            raise UIDClash(
                f"SOPInstanceUID {header.sop_instance_uid} is already stored in another "
                "series or study"
            )
        file_values = {
            "path": str(relative),
            "size_bytes": size,
            "transfer_syntax_uid": transfer_syntax,
            "now": now,
        }
        if existing is None:
            self._run(
                cur,
                "instance_insert",
                study_id=study_id,
                series_id=series_id,
                uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                instance_number=header.instance_number,
                **file_values,
            )
        else:
            self._run(cur, "instance_update", row_id=existing[0], **file_values)
        added = 0 if existing is not None else 1
        self._run(cur, "series_touch", added=added, now=now, row_id=series_id)
        self._run(cur, "study_touch", added=added, now=now, row_id=study_id)
        return existing is not None
