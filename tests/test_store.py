"""The store and its index on real files and a real SQLite database (no network)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.database import make_engine, session_factory, upgrade
from dicomnode.models import Instance, Series, Study, StudyStatus
from dicomnode.store import (
    ROUTING_KEYWORDS,
    InstanceStore,
    Provenance,
    StoreError,
    UIDClash,
    UnreadableDataset,
    parse_header,
    parse_header_from_dataset,
    results_dir,
)
from tests.conftest import sample_paths

Sessions = sessionmaker[Session]
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def sessions(tmp_path: Path) -> Sessions:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    return session_factory(make_engine(url))


@pytest.fixture
def store(sessions: Sessions, tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "storage", sessions)


def ct_bytes(study: str, series: str, sop: str) -> bytes:
    """The dataset bytes (no file meta, explicit VR little endian) of a CT slice with these UIDs."""
    ds = pydicom.dcmread(sample_paths()[0])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    read_preamble(buffer, False)
    _read_file_meta_info(buffer)
    return buffer.read()


def store_ct(store: InstanceStore, study: str, series: str, sop: str) -> Path:
    return store.store(ct_bytes(study, series, sop), EXPLICIT_LE, provenance=Provenance("CT1")).path


def rows(sessions: Sessions) -> list[Instance]:
    with sessions() as session:
        return list(session.execute(select(Instance)).scalars())


def test_an_instance_refused_as_a_clash_leaves_no_file(
    store: InstanceStore, sessions: Sessions
) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    stored = store_ct(store, study, series, sop)
    original = stored.read_bytes()

    other_series = generate_uid()
    with pytest.raises(UIDClash, match="already stored in another series"):
        store_ct(store, study, other_series, sop)
    assert not (store.instances_dir / study / other_series / f"{sop}.dcm").exists()

    other_study = generate_uid()
    new_sop = generate_uid()
    with pytest.raises(UIDClash, match="already belongs to another study"):
        store_ct(store, other_study, series, new_sop)
    assert not (store.instances_dir / other_study / series / f"{new_sop}.dcm").exists()

    assert stored.read_bytes() == original  # the acknowledged copy is untouched
    assert [row.path for row in rows(sessions)] == [str(stored.relative_to(store.root))]
    assert list(store.tmp_dir.iterdir()) == []


def test_a_clash_over_an_existing_file_keeps_that_file(store: InstanceStore) -> None:
    """A resend of a file left in place (e.g. by recovery) is not deleted when refused."""
    study, series = generate_uid(), generate_uid()
    store_ct(store, study, series, generate_uid())
    other_study, sop = generate_uid(), generate_uid()
    leftover = store.instances_dir / other_study / series / f"{sop}.dcm"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"an earlier copy")
    with pytest.raises(UIDClash):
        store_ct(store, other_study, series, sop)
    assert leftover.is_file()


def test_a_study_rolled_back_by_a_clash_does_not_keep_its_row_id(
    store: InstanceStore, sessions: Sessions
) -> None:
    """SQLite gives a rolled-back row's id to the next new row: it must not stay cached."""
    study_a, series_a = generate_uid(), generate_uid()
    store_ct(store, study_a, series_a, generate_uid())
    study_b = generate_uid()
    with pytest.raises(UIDClash):  # study B's row is inserted, then rolled back
        store_ct(store, study_b, series_a, generate_uid())
    study_c, series_c = generate_uid(), generate_uid()
    store_ct(store, study_c, series_c, generate_uid())  # takes the id B had for a moment
    series_b = generate_uid()
    store_ct(store, study_b, series_b, generate_uid())
    with sessions() as session:
        owners = dict(
            session.execute(
                select(Series.series_instance_uid, Study.study_instance_uid).join(
                    Study, Series.study_id == Study.id
                )
            ).all()
        )
    assert owners == {series_a: study_a, series_c: study_c, series_b: study_b}


def test_index_rows_keep_times_counts_and_attributes(
    store: InstanceStore, sessions: Sessions
) -> None:
    header = parse_header(ct_bytes(generate_uid(), generate_uid(), generate_uid()), EXPLICIT_LE)
    relative = Path("instances/a/b/c.dcm")
    prov = Provenance("CT1", "NODE", "10.0.0.5")
    first = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    resend = datetime(2024, 5, 1, 12, 5, 0, tzinfo=UTC)
    assert store.index(header, relative, 10, EXPLICIT_LE, prov, first) is False
    with sessions.begin() as session:  # assembly completed the study meanwhile
        session.execute(update(Study).values(status=StudyStatus.COMPLETE))
    assert store.index(header, relative, 12, EXPLICIT_LE, prov, resend) is True
    with sessions() as session:
        study = session.execute(select(Study)).scalar_one()
        series = session.execute(select(Series)).scalar_one()
        instance = session.execute(select(Instance)).scalar_one()
    assert instance.times_received == 2 and instance.size_bytes == 12
    assert instance.received_at == resend  # aware UTC back, microseconds kept
    assert study.status == StudyStatus.RECEIVING  # an arrival re-opens the study
    assert study.first_received_at == first and study.last_received_at == resend
    assert study.instance_count == 1 and series.instance_count == 1
    assert (study.calling_aet, study.called_aet, study.sender_host) == ("CT1", "NODE", "10.0.0.5")
    assert series.first_received_at == first and series.last_received_at == resend
    assert series.modality == "CT" and series.attributes["Modality"] == "CT"
    assert "ORIGINAL" in series.attributes["ImageType"]


def test_results_folder_of_a_job(store: InstanceStore) -> None:
    assert results_dir(store.root, 42) == store.root / "results" / "42"
    assert store.results_dir(42) == store.root / "results" / "42"


# -- the header scan decodes what pydicom decodes ------------------------------------------

_PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
# Every keyword the index or a route may read, text and numbers, single and multi-valued.
_KEYWORDS = (
    *ROUTING_KEYWORDS,
    "PatientBirthDate",
    "PatientSex",
    "StudyTime",
    "ReferringPhysicianName",
    "InstitutionName",
    "WindowCenter",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "BitsAllocated",
    "NumberOfFrames",
)


def _dataset_part(path: Path) -> tuple[bytes, str]:
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return raw[fp.tell() :], str(meta.TransferSyntaxUID)


def _corpus() -> list[Path]:
    files = sorted((_PYDICOM_DATA / "test_files").glob("*.dcm"))
    return files + sorted((_PYDICOM_DATA / "charset_files").glob("*.dcm"))


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_header_scan_agrees_with_pydicom(path: Path) -> None:
    """Every local pydicom test file (transfer syntaxes, character sets, sequences, odd values)."""
    try:
        raw, syntax = _dataset_part(path)
        read = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        pytest.skip("pydicom cannot read this file's meta or header")
    if "truncated" in path.name:  # pydicom reads the header; the node refuses the whole
        with pytest.raises(UnreadableDataset, match="dataset is truncated: element"):
            parse_header(raw, syntax, _KEYWORDS)
        return
    try:
        expected = parse_header_from_dataset(read, _KEYWORDS)
    except StoreError:  # e.g. no SOP Instance UID: the scan refuses it too
        with pytest.raises(StoreError):
            parse_header(raw, syntax, _KEYWORDS)
        return
    assert parse_header(raw, syntax, _KEYWORDS) == expected
