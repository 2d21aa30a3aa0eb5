"""Delivery by STOW-RS: per-instance answers, retries, bearer tokens and OAuth2.

The DICOMweb destination is a second node's own STOW-RS endpoint (a real
HTTP server with real token checks) and, for the refusals, that node with a
full disk; OAuth2 client credentials come from a token endpoint in the test
(the one part no real peer here provides).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pydicom
import pytest
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.dicomweb import store_files
from dicomnode.jobs import JobQueue, job_to_dict
from dicomnode.models import Instance
from dicomnode.service import Node
from dicomnode.testing.node import NODE_AE, settings_data
from dicomnode.testing.peers import storescu
from tests.test_durability import ct_study

pytestmark = pytest.mark.slow

STORE_TOKEN = "store-token-0123456789abcdef"


def receiving_node(root: Path, **extra: Any) -> Node:
    """A node whose STOW-RS endpoint takes STORE_TOKEN (no pipelines, no routes)."""
    data = settings_data(root)
    data["api"] = {
        "enabled": True,
        "port": 0,
        "stow": True,
        "tokens": [{"token": STORE_TOKEN, "role": "store", "name": "sender-node"}],
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    node = Node(Settings.model_validate(data), workers=0)
    node.start()
    return node


def stow_url(node: Node) -> str:
    assert node.api is not None
    return f"http://127.0.0.1:{node.api.port}/dicomweb"


def sending_node(root: Path, destination: dict[str, Any], **delivery: Any) -> Node:
    data = settings_data(root)
    data.update(
        destinations=[{"name": "cloud", "kind": "dicomweb", **destination}],
        routes=[{"pipeline": "summary", "match": {"Modality": "CT"}, "send_to": ["cloud"]}],
        pipelines={"summary": {"type": "tests.pipelines:SeriesSummary"}},
    )
    data["delivery"].update(delivery)
    node = Node(Settings.model_validate(data), workers=1)
    node.start()
    return node


def push_study(node: Node, tmp: Path, n: int = 3) -> None:
    paths = []
    for ds in ct_study(n):
        path = tmp / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    assert (
        storescu(paths, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE).returncode
        == 0
    )


def one_final_job(node: Node, timeout: float = 60) -> dict[str, Any]:
    queue = JobQueue(node.sessions)
    deadline = time.monotonic() + timeout
    while True:
        jobs = queue.list()
        if jobs and jobs[0].status in ("done", "failed"):
            return job_to_dict(queue.get(jobs[0].id), events=True)
        assert time.monotonic() < deadline, [j.status for j in jobs]
        time.sleep(0.2)


def indexed(node: Node, sop_instance_uid: str) -> bool:
    with node.sessions() as session:
        return (
            session.execute(
                select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
            ).first()
            is not None
        )


def test_results_go_by_stow_rs_with_a_bearer_token(tmp_path: Path) -> None:
    receiver = receiving_node(tmp_path / "b")
    try:
        sender = sending_node(
            tmp_path / "a", {"url": stow_url(receiver), "auth": "bearer", "token": STORE_TOKEN}
        )
        try:
            push_study(sender, tmp_path)
            job = one_final_job(sender)
            assert job["status"] == "done", job["error"]
            (output,) = job["outputs"]
            assert output["status"] == "sent" and output["warning"] is None
            assert indexed(receiver, output["sop_instance_uid"])
            # The same timeline words as a C-STORE delivery.
            assert "1 object(s) stored at cloud" in [e["message"] for e in job["events"]]
        finally:
            sender.stop()
    finally:
        receiver.stop()


def test_refused_instances_fail_with_their_reason_and_retry_resends(tmp_path: Path) -> None:
    # A full disk: the receiving node refuses every instance (0xA700) and answers 409.
    receiver = receiving_node(tmp_path / "b", storage={"min_free_bytes": 1 << 62})
    destination = {"url": stow_url(receiver), "auth": "bearer", "token": STORE_TOKEN}
    sender = sending_node(tmp_path / "a", destination, max_attempts=2, backoff_seconds=0.2)
    try:
        push_study(sender, tmp_path)
        job = one_final_job(sender)
        assert job["status"] == "failed"
        (output,) = job["outputs"]
        assert output["status"] == "failed" and output["attempts"] == 2
        assert output["error"] == "cloud refused it: failure reason 0xA700 (out of resources)"
        assert job["error"] == (
            "delivery to cloud failed after 2 attempts: cloud refused it: failure reason "
            "0xA700 (out of resources)"
        )
        # Room again (the receiving node restarts with its default floor): retry resends.
        port = receiver.api.port if receiver.api else 0
        receiver.stop()
        receiver = receiving_node(tmp_path / "b", api={"port": port})
        JobQueue(sender.sessions).retry(job["id"])
        done = one_final_job(sender)
        assert done["status"] == "done", done["error"]
        assert done["outputs"][0]["sop_instance_uid"] == output["sop_instance_uid"]
        assert indexed(receiver, output["sop_instance_uid"])
    finally:
        sender.stop()
        receiver.stop()


def test_a_partly_refused_request_sends_the_good_and_fails_the_bad(tmp_path: Path) -> None:
    receiver = receiving_node(tmp_path / "b")
    try:
        good = ct_study(1)[0]
        bad = ct_study(1)[0]
        bad.SOPClassUID = "1.2.3.4.5"  # no storage SOP class: the node refuses it
        bad.file_meta.MediaStorageSOPClassUID = bad.SOPClassUID
        paths = []
        for name, ds in (("good", good), ("bad", bad)):
            paths.append(tmp_path / f"{name}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
        settings = Settings.model_validate(
            {
                **settings_data(tmp_path / "a"),
                "destinations": [
                    {
                        "name": "cloud",
                        "kind": "dicomweb",
                        "url": stow_url(receiver),
                        "auth": "bearer",
                        "token": STORE_TOKEN,
                    }
                ],
            }
        )
        report = store_files(paths, settings.destination("cloud"))
        assert report.sent == 1 and list(report.failures) == [paths[1]]
        assert report.failures[paths[1]] == (
            "cloud refused it: failure reason 0x0122 (SOP Class not supported)"
        )
        assert indexed(receiver, str(good.SOPInstanceUID))
        assert not indexed(receiver, str(bad.SOPInstanceUID))
        # A wrong token: every file fails with the server's answer and a hint.
        wrong = settings.destination("cloud").model_copy(update={"token": "x" * 20})
        refused = store_files(paths[:1], wrong)
        assert refused.failures[paths[0]].startswith(
            f"cloud ({stow_url(receiver)}) answered HTTP 401"
        )
        assert refused.failures[paths[0]].endswith("check the credentials of this peer")
    finally:
        receiver.stop()


class _TokenEndpoint(BaseHTTPRequestHandler):
    """OAuth2 client credentials: the right client gets the store token, for 1 hour."""

    issued: list[dict[str, list[str]]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        type(self).issued.append(form)
        right = form.get("client_id") == ["node-a"] and form.get("client_secret") == ["s3cret"]
        if form.get("grant_type") != ["client_credentials"] or not right:
            body, status = {"error": "invalid_client"}, 401
        else:
            body, status = (
                {"access_token": STORE_TOKEN, "token_type": "Bearer", "expires_in": 3600},
                200,
            )
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def token_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _TokenEndpoint.issued = []
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def test_oauth2_client_credentials_get_a_token_once_and_a_wrong_secret_is_named(
    tmp_path: Path, token_endpoint: str
) -> None:
    receiver = receiving_node(tmp_path / "b")
    try:
        oauth = {
            "url": stow_url(receiver),
            "auth": "oauth2",
            "token_url": token_endpoint,
            "client_id": "node-a",
            "scope": "dicom.write",
        }
        settings = Settings.model_validate(
            {
                **settings_data(tmp_path / "a"),
                "destinations": [
                    {"name": "cloud", "kind": "dicomweb", **oauth, "client_secret": "s3cret"},
                    {"name": "wrong", "kind": "dicomweb", **oauth, "client_secret": "guess"},
                ],
            }
        )
        paths = []
        for ds in ct_study(3):
            paths.append(tmp_path / f"{ds.SOPInstanceUID}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
        report = store_files(paths, settings.destination("cloud"))
        assert report.sent == 3 and not report.failures
        assert len(_TokenEndpoint.issued) == 1  # one token for the whole send
        assert _TokenEndpoint.issued[0]["scope"] == ["dicom.write"]
        refused = store_files(paths[:1], settings.destination("wrong"))
        assert refused.failures[paths[0]] == (
            f"wrong ({stow_url(receiver)}): OAuth2 token endpoint {token_endpoint} answered "
            'HTTP 401: {"error": "invalid_client"}'
        )
        assert all(indexed(receiver, str(pydicom.dcmread(p).SOPInstanceUID)) for p in paths)
    finally:
        receiver.stop()
