"""The receiver over real TCP: DCMTK storescu/echoscu and pynetdicom as peers."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from dicomnode.models import Instance, Series, Study
from dicomnode.testing.peers import echoscu, storescu
from tests.conftest import NODE_AE, sample_paths


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a DICOM file (after preamble and file meta)."""
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return raw[fp.tell() :]


def instances(node) -> list[Instance]:  # type: ignore[no-untyped-def]
    with node.sessions() as session:
        return list(session.execute(select(Instance)).scalars())


def pynetdicom_store(port: int, dataset_or_path, calling: str = "PYSCU"):  # type: ignore[no-untyped-def]
    """C-STORE one dataset (or raw file) and return the response status dataset."""
    ae = AE(ae_title=calling)
    if isinstance(dataset_or_path, str):
        ae.add_requested_context(
            CTImageStorage, pydicom.dcmread(dataset_or_path).file_meta.TransferSyntaxUID
        )
    else:
        ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    status = assoc.send_c_store(dataset_or_path)
    assoc.release()
    return status


def ct_dataset(**overrides: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(sample_paths()[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in overrides.items():
        setattr(ds, key, value)
    return ds


def echo_ok(port: int) -> bool:
    return echoscu(host="127.0.0.1", port=port, called_aet=NODE_AE).returncode == 0


def test_echoscu_gets_success(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    assert echo_ok(node.receiver.port)


UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


@pytest.mark.parametrize("path", sample_paths(), ids=lambda p: p.name)
def test_storescu_stores_every_transfer_syntax(make_settings, start_node, path: Path) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    result = storescu([path], host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = instances(node)
    original = pydicom.dcmread(path)
    stored = pydicom.dcmread(node.store.root / row.path)
    assert row.sop_instance_uid == original.SOPInstanceUID == stored.SOPInstanceUID
    assert stored.file_meta.SourceApplicationEntityTitle == "STORESCU"
    sent_ts = str(original.file_meta.TransferSyntaxUID)
    if sent_ts not in UNCOMPRESSED:  # storescu sends compressed data as it is
        assert row.transfer_syntax_uid == sent_ts
        assert stored.PixelData == original.PixelData


@pytest.mark.parametrize("path", sample_paths(), ids=lambda p: p.name)
def test_dataset_is_stored_byte_for_byte(make_settings, start_node, path: Path, raw_send) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title=NODE_AE)
    status = assoc.send_c_store(str(path))
    assoc.release()
    assert status.Status == 0
    (row,) = instances(node)
    # The node keeps what the modality sent: no decode, no re-encode.
    assert dataset_bytes(node.store.root / row.path) == dataset_bytes(path)
    assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID


def test_study_and_series_rows_carry_routing_attributes(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    ct = sample_paths()[0]
    assert (
        storescu(
            [ct],
            host="127.0.0.1",
            port=node.receiver.port,
            called_aet=NODE_AE,
            calling_aet="SCANNER1",
        ).returncode
        == 0
    )
    with node.sessions() as session:
        study = session.execute(select(Study)).scalar_one()
        series = session.execute(select(Series)).scalar_one()
    assert study.calling_aet == "SCANNER1"
    assert study.instance_count == 1
    assert series.modality == "CT"
    assert series.attributes["SliceThickness"] == pytest.approx(5.0)
    assert "ORIGINAL" in series.attributes["ImageType"]


def test_unknown_calling_aet_is_rejected_and_node_keeps_answering(
    make_settings, start_node
) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(node={"allowed_calling_aets": ["SCANNER1"]}))
    port = node.receiver.port
    refused = storescu(
        sample_paths()[:1], host="127.0.0.1", port=port, called_aet=NODE_AE, calling_aet="INTRUDER"
    )
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert instances(node) == []
    allowed = storescu(
        sample_paths()[:1], host="127.0.0.1", port=port, called_aet=NODE_AE, calling_aet="SCANNER1"
    )
    assert allowed.returncode == 0
    assert (
        echoscu(host="127.0.0.1", port=port, called_aet=NODE_AE, calling_aet="SCANNER1").returncode
        == 0
    )


def test_wrong_called_aet_is_rejected(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    result = echoscu(host="127.0.0.1", port=node.receiver.port, called_aet="SOMEONEELSE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr


@pytest.mark.parametrize("bad_uid", ["../../x", "1.2.3.abc", "1.2.03", "1..2"])
def test_invalid_sop_instance_uid_is_refused_and_nothing_is_written(
    make_settings, start_node, bad_uid: str
) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    status = pynetdicom_store(node.receiver.port, ct_dataset(SOPInstanceUID=bad_uid))
    assert status.Status == 0xC120
    assert "not a valid DICOM UID" in status.ErrorComment
    assert instances(node) == []
    files = [p for p in node.store.root.rglob("*") if p.is_file()]
    assert files == []
    assert echo_ok(node.receiver.port)


def test_invalid_study_uid_is_refused(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    status = pynetdicom_store(node.receiver.port, ct_dataset(StudyInstanceUID="../etc"))
    assert status.Status == 0xC120
    assert "StudyInstanceUID" in status.ErrorComment


@pytest.fixture
def raw_send(monkeypatch):  # type: ignore[no-untyped-def]
    """Make pynetdicom send files byte for byte (no decode), as a broken modality would."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def test_truncated_dataset_is_refused(make_settings, start_node, tmp_path: Path, raw_send) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    ds = ct_dataset()
    whole = tmp_path / "whole.dcm"
    ds.save_as(whole, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole.read_bytes()[:-5000])
    status = pynetdicom_store(node.receiver.port, str(truncated))
    assert status.Status == 0xC121
    assert "truncated" in status.ErrorComment
    assert instances(node) == []
    assert echo_ok(node.receiver.port)


def test_garbage_dataset_is_refused(make_settings, start_node, tmp_path: Path, raw_send) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    ds = ct_dataset()
    whole = tmp_path / "whole.dcm"
    ds.save_as(whole, enforce_file_format=True)
    meta_len = len(whole.read_bytes()) - len(dataset_bytes(whole))
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(whole.read_bytes()[:meta_len] + bytes(range(256)) * 8)
    status = pynetdicom_store(node.receiver.port, str(garbage))
    assert status.Status in (0xC120, 0xC121)
    assert instances(node) == []
    assert echo_ok(node.receiver.port)


def test_request_and_dataset_uids_must_agree(
    make_settings, start_node, tmp_path: Path, raw_send
) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    ds = ct_dataset()
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    # The file meta (used for the request) names another instance than the dataset.
    meta_ds = pydicom.dcmread(path)
    meta_ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    meta_ds.save_as(path, enforce_file_format=False)
    status = pynetdicom_store(node.receiver.port, str(path))
    assert status.Status == 0xC122


def test_full_disk_answers_out_of_resources_and_keeps_serving(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(storage={"min_free_bytes": 2**60}))
    status = pynetdicom_store(node.receiver.port, ct_dataset())
    assert status.Status == 0xA700
    assert "below the floor" in status.ErrorComment
    assert instances(node) == []
    assert echo_ok(node.receiver.port)
    # Space comes back (admin cleaned up): the same node stores again.
    node.store.min_free_bytes = 0
    assert pynetdicom_store(node.receiver.port, ct_dataset()).Status == 0x0000


def test_disk_write_error_answers_out_of_resources(make_settings, start_node, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import errno
    import os as os_module

    node = start_node(make_settings())
    real_write = os_module.write

    def failing_write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dicomnode.store.files.os.write", failing_write)
    status = pynetdicom_store(node.receiver.port, ct_dataset())
    monkeypatch.setattr("dicomnode.store.files.os.write", real_write)
    assert status.Status == 0xA700
    assert "No space left" in status.ErrorComment
    assert list((node.store.root / "tmp").iterdir()) == []  # no partial file left behind
    assert echo_ok(node.receiver.port)


def test_same_sop_instance_twice_replaces_and_counts(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    ds = ct_dataset()
    assert pynetdicom_store(node.receiver.port, ds).Status == 0
    ds.SeriesDescription = "corrected"
    assert pynetdicom_store(node.receiver.port, ds).Status == 0
    rows = instances(node)
    assert len(rows) == 1
    assert rows[0].times_received == 2
    stored = pydicom.dcmread(node.store.root / rows[0].path)
    assert stored.SeriesDescription == "corrected"
    with node.sessions() as session:
        assert session.execute(select(Study.instance_count)).scalar_one() == 1


def test_same_sop_instance_in_another_series_is_a_clash(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    ds = ct_dataset()
    assert pynetdicom_store(node.receiver.port, ds).Status == 0
    ds.SeriesInstanceUID = generate_uid()
    status = pynetdicom_store(node.receiver.port, ds)
    assert status.Status == 0xC123
    assert len(instances(node)) == 1


def test_max_associations_refuses_the_extra_one(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(node={"max_associations": 1}))
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    first = ae.associate("127.0.0.1", node.receiver.port, ae_title=NODE_AE)
    assert first.is_established
    second = ae.associate("127.0.0.1", node.receiver.port, ae_title=NODE_AE)
    assert second.is_rejected
    first.release()
    for _ in range(50):  # the server counts the first one until its thread ends
        third = ae.associate("127.0.0.1", node.receiver.port, ae_title=NODE_AE)
        if third.is_established:
            break
        time.sleep(0.1)
    assert third.is_established
    third.release()


def test_idle_association_is_closed_after_the_network_timeout(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(node={"network_timeout": 1.0}))
    ae = AE(ae_title="IDLE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title=NODE_AE)
    assert assoc.is_established
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not assoc.is_established  # the node let go of a silent peer
    assert echo_ok(node.receiver.port)
