"""STOW-RS over real HTTP against a running node: dicomweb-client, Orthanc's DICOMweb client, bad input.

Each test starts a node with ``api.stow = true`` (in this process, or as
``dicomnode serve`` where memory is measured) and pushes with a real client;
the bad-input tests build their multipart bodies by hand, as a broken client
would, and check the exact status, that nothing of the request is in the index,
``instances/`` or ``tmp/``, and that the node still answers C-ECHO and a good STOW.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import io
import os
import resource
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.database import make_engine, session_factory, upgrade
from dicomnode.models import Instance, Study
from dicomnode.service import Node
from dicomnode.store import InstanceStore
from dicomnode.testing.node import NodeProcess, settings_data
from dicomnode.testing.peers import Orthanc, free_port, write_large_instance
from tests.conftest import NODE_AE, sample_paths
from tests.test_durability import ct_study
from tests.test_flow import wait_for_jobs
from tests.test_receiver import ct_dataset, dataset_bytes, echo_ok

STORE = "store-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
TOKENS = [
    {"token": STORE, "role": "store", "name": "modality-push"},
    {"token": READ, "role": "read", "name": "monitor"},
    {"token": ADMIN, "role": "admin", "name": "ops"},
]
BOUNDARY = "b0undary-1234"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
NOT_DICOM = b"this is a radiology report, not a DICOM file\n" * 10
REFERENCED, FAILED, FAILURE_REASON = "00081199", "00081198", "00081197"


def stow_settings(**sections: Any) -> dict[str, Any]:
    """The ``api`` section of a node that takes STOW-RS, merged with *sections*."""
    return {"api": {"enabled": True, "port": 0, "stow": True, "tokens": TOKENS}, **sections}


@dataclass
class Stow:
    """A running node with STOW-RS, and an HTTP client holding the store token."""

    node: Node
    url: str
    client: httpx.Client

    def post(
        self,
        body: bytes,
        *,
        path: str = "/dicomweb/studies",
        content_type: str | None = CONTENT_TYPE,
        token: str | None = STORE,
    ) -> httpx.Response:
        headers = {"Content-Type": content_type} if content_type else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.post(self.url + path, content=body, headers=headers, timeout=60)


def stow_counts(stow: Stow) -> dict[str, float]:
    """``dicomnode_stow_instances_total`` of the node's /metrics, by outcome."""
    from prometheus_client.parser import text_string_to_metric_families

    text = stow.client.get("/metrics").text
    counts = {"stored": 0.0, "refused": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dicomnode_stow_instances_total":
                counts[sample.labels["outcome"]] = sample.value
    return counts


@pytest.fixture(scope="module")
def stow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stow]:
    """One node for the module's request tests: each compares what is stored before and after."""
    data = settings_data(tmp_path_factory.mktemp("stow"))
    data.update(stow_settings())
    node = Node(Settings.model_validate(data), workers=0)
    node.start()
    try:
        assert node.api is not None
        with httpx.Client(base_url=node.api.url, timeout=60, trust_env=False) as client:
            yield Stow(node, node.api.url, client)
    finally:
        node.stop()


def part10(ds: pydicom.Dataset) -> bytes:
    """*ds* as a DICOM Part 10 file (preamble, ``DICM``, file meta, data set)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # some tests write invalid UIDs on purpose
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(*parts: bytes | tuple[str, bytes]) -> bytes:
    """A multipart/related body of *parts* (a part is bytes, or (its Content-Type, bytes))."""
    out = b""
    for part in parts:
        content_type, data = part if isinstance(part, tuple) else ("application/dicom", part)
        out += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def many_parts(n: int) -> tuple[list[str], list[bytes]]:
    """SOP Instance UIDs and Part 10 files of *n* slices of one new study, made fast.

    One CT slice is encoded; each copy has its SOP Instance UID's bytes
    replaced by another UID of the same length (so no element length changes).
    """
    stem = f"2.25.{uuid.uuid4().int}"[:50]
    uids = [f"{stem}{i:06d}" for i in range(n)]
    template = part10(
        ct_dataset(
            SOPInstanceUID=uids[0],
            StudyInstanceUID=generate_uid(),
            SeriesInstanceUID=generate_uid(),
        )
    )
    assert template.count(uids[0].encode()) == 2  # the file meta's and the data set's
    return uids, [template.replace(uids[0].encode(), uid.encode()) for uid in uids]


def stored_uids(node: Node) -> set[str]:
    with node.sessions() as session:
        return set(session.execute(select(Instance.sop_instance_uid)).scalars())


def snapshot(node: Node) -> tuple[set[str], set[str], list[str]]:
    """What is stored: index rows, files under ``instances/``, files under ``tmp/``."""
    files = {p.stem for p in node.store.iter_files()}
    return stored_uids(node), files, sorted(p.name for p in node.store.tmp_dir.iterdir())


def referenced(body: dict[str, Any], key: str = REFERENCED) -> list[str]:
    """SOP Instance UIDs of a response sequence ("" where the node could not tell)."""
    return [item["00081155"].get("Value", [""])[0] for item in body.get(key, {}).get("Value", [])]


def reasons(body: dict[str, Any]) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in body[FAILED]["Value"]]


def assert_still_serving(stow: Stow) -> None:
    """C-ECHO answers, and a good STOW of one instance is stored."""
    assert echo_ok(stow.node.receiver.port)
    good = ct_dataset()
    response = stow.post(multipart(part10(good)))
    assert response.status_code == 200, response.text[:500]
    assert good.SOPInstanceUID in stored_uids(stow.node)


# -- (a) dicomweb-client: stored, byte-identical, assembled, routed, processed ---------------


def test_dicomweb_client_stores_a_study_that_is_assembled_routed_and_processed(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], tmp_path: Path
) -> None:
    log = tmp_path / "record.log"
    settings = make_settings(
        **stow_settings(),
        # CalledAETitle: a STOW'd study arrives as if called on the node's AE title.
        routes=[{"pipeline": "record", "match": {"Modality": "CT", "CalledAETitle": NODE_AE}}],
        pipelines={"record": {"type": "dicomnode.testing.pipelines:Record", "log": str(log)}},
    )
    node = start_node(settings, workers=1)
    assert node.api is not None
    first = ct_study(4)
    second = [copy.deepcopy(ds) for ds in ct_study(3)]
    series = generate_uid()
    for ds in second:  # the same study, another series
        ds.StudyInstanceUID, ds.SeriesInstanceUID = first[0].StudyInstanceUID, series
    sent = first + second
    client = DICOMwebClient(
        url=f"{node.api.url}/dicomweb", headers={"Authorization": f"Bearer {STORE}"}
    )

    answer = client.store_instances(sent)

    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in sent
    ]
    assert "FailedSOPSequence" not in answer
    stored = {p.stem: p for p in node.store.iter_files()}
    assert set(stored) == {ds.SOPInstanceUID for ds in sent} == stored_uids(node)
    for ds in sent:  # what dicomweb-client sent, after its file meta, is what the node keeps
        sent_file = tmp_path / "sent.dcm"
        sent_file.write_bytes(part10(ds))
        assert dataset_bytes(stored[ds.SOPInstanceUID]) == dataset_bytes(sent_file)
    (job,) = wait_for_jobs(node, timeout=60)
    assert job["status"] == "done", job
    assert job["study_instance_uid"] == first[0].StudyInstanceUID
    assert log.read_text().split()[0] == str(job["id"])
    with node.sessions() as session:
        study = session.execute(select(Study)).scalar_one()
        assert (study.calling_aet, study.called_aet, study.sender_host) == (
            None,
            NODE_AE,
            "127.0.0.1",
        )
        assert study.instance_count == len(sent)


def test_every_transfer_syntax_is_stored_byte_identical(stow: Stow) -> None:
    for path in sample_paths():  # one request each: several share a SOP Instance UID
        response = stow.post(multipart(path.read_bytes()))
        assert response.status_code == 200, (path.name, response.text[:500])
        (uid,) = referenced(response.json())
        (stored,) = [p for p in stow.node.store.iter_files() if p.stem == uid]
        assert dataset_bytes(stored) == dataset_bytes(path), path.name


def test_the_file_meta_is_found_whatever_the_chunks(tmp_path: Path) -> None:
    """Part 10 files fed to the store a few bytes at a time up to their data set, then at once."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    store = InstanceStore(tmp_path / "storage", session_factory(make_engine(url)))
    for path in sample_paths():
        raw = path.read_bytes()
        for step in (1, 7):
            incoming = store.receive_file()
            for start in range(0, 1024, step):
                incoming.write(raw[start : min(start + step, 1024)])
            incoming.write(raw[1024:])
            stored = incoming.finish()
            assert dataset_bytes(stored.path) == dataset_bytes(path), (path.name, step)
    assert list(store.tmp_dir.iterdir()) == []


# -- (b) Orthanc's own DICOMweb client pushes a study ------------------------------------------


@pytest.mark.slow
def test_orthanc_pushes_a_study_with_its_dicomweb_client(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node(make_settings(**stow_settings()))
    assert node.api is not None
    study = ct_study(5)
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        for ds in study:
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            path.write_bytes(part10(ds))
            orthanc.upload(path)
        orthanc_study = orthanc.find_study(study[0].StudyInstanceUID)
        orthanc.client.put(
            "/dicom-web/servers/NODE",
            json={
                "Url": f"{node.api.url}/dicomweb",
                "HttpHeaders": {"Authorization": f"Bearer {STORE}"},
            },
        ).raise_for_status()
        pushed = orthanc.client.post(
            "/dicom-web/servers/NODE/stow", json={"Resources": [orthanc_study]}
        )
        assert pushed.status_code == 200, pushed.text + orthanc.log.read_text()[-2000:]
    assert stored_uids(node) == {ds.SOPInstanceUID for ds in study}
    assert sorted(p.name for p in node.store.tmp_dir.iterdir()) == []


# -- (c) bad input: each answered as PS3.18 says, nothing partial stored -------------------


def _truncated() -> bytes:
    body = multipart(part10(ct_dataset()), part10(ct_dataset()))
    return body[: len(body) - 200]  # inside the second part: no closing boundary


def _broken() -> bytes:
    good = multipart(part10(ct_dataset()))[: -len(f"--{BOUNDARY}--\r\n")]
    return good + f"--{BOUNDARY}\r\nNot A Header Line\r\n\r\n".encode() + b"x" * 100


BAD_REQUESTS: dict[str, tuple[dict[str, Any], int]] = {
    "a single application/dicom body": ({"content_type": "application/dicom"}, 415),
    "DICOM JSON metadata parts": (
        {"content_type": f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'},
        415,
    ),
    "a form upload": ({"content_type": f"multipart/form-data; boundary={BOUNDARY}"}, 415),
    "no Content-Type": ({"content_type": None}, 415),
    "no boundary": ({"content_type": 'multipart/related; type="application/dicom"'}, 400),
    "a broken multipart body": ({"body": _broken}, 400),
    "a truncated multipart body": ({"body": _truncated}, 400),
    "a body without parts": ({"body": lambda: f"--{BOUNDARY}--\r\n".encode()}, 400),
    "garbage instead of multipart": ({"body": lambda: NOT_DICOM}, 400),
    "no token": ({"token": None}, 401),
    "an unknown token": ({"token": "unknown-token-0123456789abcdef"}, 401),
    "a read-only token": ({"token": READ}, 403),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_is_answered_as_a_whole_and_stores_nothing(stow: Stow, case: str) -> None:
    options, status = BAD_REQUESTS[case]
    options = dict(options)
    make_body = options.pop("body", lambda: multipart(part10(ct_dataset())))
    before = snapshot(stow.node)

    response = stow.post(make_body(), **options)

    assert response.status_code == status, response.text[:500]
    assert response.json()["detail"]  # a sentence
    assert snapshot(stow.node) == before
    assert_still_serving(stow)


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies/..",
        "/dicomweb/studies/1.2.3/../../api/v1/jobs",
        "/dicomweb/studies/1.2.3%2F..%2F4",
        "/dicomweb/studies/1.2.3%00",
        "/dicomweb/studies/1.02.3",
    ],
)
def test_a_study_uid_in_the_url_that_is_not_a_uid_is_refused_before_the_body(
    stow: Stow, path: str
) -> None:
    before = snapshot(stow.node)
    host, port = stow.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    body = multipart(part10(ct_dataset()))
    # http.client sends the path as written (httpx would remove the dot segments).
    connection.request(
        "POST",
        path,
        body=body,
        headers={"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {STORE}"},
    )
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    assert response.status == 400, text
    assert "is not a valid DICOM UID" in text
    assert snapshot(stow.node) == before
    assert_still_serving(stow)


def _with(**attributes: str) -> pydicom.Dataset:
    ds = ct_dataset()
    with warnings.catch_warnings():  # invalid UIDs on purpose
        warnings.simplefilter("ignore")
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


REFUSED_PARTS: dict[str, tuple[Callable[[], bytes | tuple[str, bytes]], int, bool]] = {
    # name: (the part, its FailureReason, whether the response names its UID)
    "a part that is not DICOM": (lambda: NOT_DICOM, 0xC121, False),
    "an empty part": (lambda: b"", 0xC121, False),
    "a part of another media type": (lambda: ("text/plain", NOT_DICOM), 0xC000, False),
    "a SOP Instance UID with path characters": (
        lambda: part10(_with(SOPInstanceUID="1.2.3/../../../etc/passwd")),
        0xC120,
        False,
    ),
    "a SOP class the node does not store": (
        lambda: part10(_with(SOPClassUID="1.2.3.4")),
        0x0122,
        True,
    ),
    "a truncated data set": (lambda: part10(ct_dataset())[:-1000], 0xC121, True),
}


@pytest.mark.parametrize("case", list(REFUSED_PARTS))
def test_a_refused_part_is_a_failed_sop_item_and_nothing_is_stored(stow: Stow, case: str) -> None:
    make_part, reason, named = REFUSED_PARTS[case]
    before = snapshot(stow.node)

    response = stow.post(multipart(make_part()))

    assert response.status_code == 409, response.text[:500]
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert reasons(body) == [reason]
    assert REFERENCED not in body
    (item,) = body[FAILED]["Value"]
    assert bool(item["00081155"].get("Value")) == named
    assert item["00090010"]["Value"] == ["dicomnode"] and item["00091001"]["Value"][0]
    assert snapshot(stow.node) == before
    assert_still_serving(stow)


def test_instances_of_another_study_than_the_urls_are_refused_with_c409(stow: Stow) -> None:
    parts = [part10(ds) for ds in ct_study(2)]
    before = snapshot(stow.node)

    response = stow.post(multipart(*parts), path=f"/dicomweb/studies/{generate_uid()}")

    assert response.status_code == 409, response.text[:500]
    assert reasons(response.json()) == [0xC409, 0xC409]
    assert snapshot(stow.node) == before
    assert_still_serving(stow)


def test_a_mixed_request_stores_the_good_parts_and_lists_the_failed(stow: Stow) -> None:
    good = ct_study(2)
    study = good[0].StudyInstanceUID
    other = ct_dataset()  # a study of its own
    before = stored_uids(stow.node)
    counted = stow_counts(stow)
    body = multipart(part10(good[0]), NOT_DICOM, part10(other), part10(good[1]))

    response = stow.post(body, path=f"/dicomweb/studies/{study}")
    # /metrics counts what STOW-RS stored and refused, as it does for C-STORE.
    assert stow_counts(stow) == {k: v + 2 for k, v in counted.items()}

    assert response.status_code == 202, response.text[:500]
    answer = response.json()
    assert referenced(answer) == [good[0].SOPInstanceUID, good[1].SOPInstanceUID]
    assert referenced(answer, FAILED) == ["", other.SOPInstanceUID]
    assert reasons(answer) == [0xC121, 0xC409]
    parsed = pydicom.Dataset.from_json(answer)  # valid DICOM JSON, as clients read it
    assert parsed.FailedSOPSequence[1].FailureReason == 0xC409
    assert stored_uids(stow.node) - before == {ds.SOPInstanceUID for ds in good}
    assert list(stow.node.store.tmp_dir.iterdir()) == []


def test_an_admin_token_may_store_and_a_store_token_may_not_read(stow: Stow) -> None:
    ds = ct_dataset()
    assert stow.post(multipart(part10(ds)), token=ADMIN).status_code == 200
    jobs = stow.client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {STORE}"})
    assert jobs.status_code == 403
    assert "read" in jobs.json()["detail"]


def test_without_api_stow_there_is_no_dicomweb_endpoint(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node]
) -> None:
    settings = make_settings(api={"enabled": True, "port": 0, "tokens": TOKENS})
    node = start_node(settings)
    assert node.api is not None
    response = httpx.post(
        f"{node.api.url}/dicomweb/studies",
        content=multipart(part10(ct_dataset())),
        headers={"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 404
    assert stored_uids(node) == set()


# -- (d) a large instance streams through in bounded memory --------------------------------


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _chunked(path: Path) -> Iterator[bytes]:
    """The multipart body around *path*, read and sent 256 KiB at a time (chunked encoding)."""
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with path.open("rb") as source:
        while chunk := source.read(256 * 1024):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _wait_until_serving(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the API at {url} did not answer"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_large_instance_streams_to_disk_in_bounded_memory(tmp_path: Path) -> None:
    """64 MiB in one chunked request: ``serve`` grows by a few MiB and stores it byte for byte."""
    large = write_large_instance(tmp_path / "large.dcm", frames=128)  # 64 MiB of pixels
    data = settings_data(tmp_path / "node")
    data["api"] = {**stow_settings()["api"], "port": free_port()}
    # STOW-RS runs in serve, beside receiver processes that own the DICOM port.
    data["node"]["receiver_processes"] = 1
    with NodeProcess(data, tmp_path / "node") as node:
        assert node.proc is not None
        url = f"http://127.0.0.1:{data['api']['port']}"
        _wait_until_serving(url)
        Path(f"/proc/{node.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
        before = _kib(node.proc.pid, "VmRSS")
        response = httpx.post(
            f"{url}/dicomweb/studies",
            content=_chunked(large),
            headers={"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {STORE}"},
            timeout=120,
        )
        growth_mib = (_kib(node.proc.pid, "VmHWM") - before) / 1024
    assert response.status_code == 200, response.text[:500]
    assert response.request.headers["transfer-encoding"] == "chunked"
    stored = next((tmp_path / "node" / "storage" / "instances").rglob("*.dcm"))
    assert (
        hashlib.sha256(dataset_bytes(stored)).digest()
        == hashlib.sha256(dataset_bytes(large)).digest()
    )
    assert growth_mib < 24, f"serve grew by {growth_mib:.0f} MiB for a 64 MiB instance"


# -- (e) many parts: all stored, no file descriptor held per part ---------------------------


def _open_fds() -> list[int]:
    return [int(fd) for fd in os.listdir("/proc/self/fd")]


def _limit_leaving(free: int, used: list[int]) -> int:
    """The RLIMIT_NOFILE under which exactly *free* more descriptors can be opened.

    The limit caps descriptor numbers, and a process may hold a high one (an
    inherited pipe): count the free numbers below the limit.
    """
    limit = 0
    while limit - sum(1 for fd in used if fd < limit) < free:
        limit += 1
    return limit


def test_three_hundred_parts_are_stored_without_a_file_descriptor_each(stow: Stow) -> None:
    uids, parts = many_parts(300)
    assert stow.post(multipart(parts[0])).status_code == 200  # the node's threads exist
    fds = _open_fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The node runs in this process: with every part holding a descriptor, 300 would not fit.
    resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_leaving(100, fds), hard))
    try:
        response = stow.post(multipart(*parts[1:]))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert response.status_code == 200, response.text[:500]
    assert referenced(response.json()) == uids[1:]
    assert set(uids) <= stored_uids(stow.node)
    assert len(_open_fds()) <= len(fds) + 5
    assert list(stow.node.store.tmp_dir.iterdir()) == []
