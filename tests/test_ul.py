"""The Upper Layer acceptor against peers that do what the standard allows, and what it forbids.

Real peers where they exist (DCMTK with small PDUs, pynetdicom proposing
contexts the node does not take); raw sockets for what no well-behaved peer
sends (garbage, a PDV on a context that was never accepted, a peer that
aborts mid-data set).
"""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicomnode.testing.peers import NODELAY_ENV, dcmtk_tool
from dicomnode.ul import dimse, pdu
from tests.conftest import NODE_AE, sample_paths
from tests.test_receiver import dataset_bytes, echo_ok, instances

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(called: str = NODE_AE, context: str = pdu.APPLICATION_CONTEXT) -> bytes:
    contexts = _item(
        0x20,
        bytes([1, 0, 0, 0]) + _item(0x30, CT.encode()) + _item(0x40, EXPLICIT.encode()),
    )
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + b"RAWPEER".ljust(16)
        + bytes(32)
        + _item(0x10, context.encode())
        + contexts
        + user
    )
    return struct.pack(">BBI", 1, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _exactly(sock, 6)
    kind, _, length = struct.unpack(">BBI", header)
    return kind, _exactly(sock, length)


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "the node closed the connection"
        data += chunk
    return data


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def test_garbage_instead_of_an_associate_request_is_aborted(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    with connect(node.receiver.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        kind, _ = read_pdu(sock)
    assert kind == pdu.A_ABORT
    assert echo_ok(node.receiver.port)


def test_an_unknown_application_context_is_rejected(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    with connect(node.receiver.port) as sock:
        sock.sendall(associate_rq(context="1.2.3.4.5"))
        kind, body = read_pdu(sock)
    assert kind == pdu.A_ASSOCIATE_RJ
    assert body[1:] == bytes([1, 1, 2])  # permanent, service user, application context


def test_a_pdv_on_a_context_never_accepted_aborts_and_stores_nothing(
    make_settings, start_node
) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    with connect(node.receiver.port) as sock:
        sock.sendall(associate_rq())
        kind, _ = read_pdu(sock)
        assert kind == pdu.A_ASSOCIATE_AC
        sock.sendall(pdu.encode_p_data(7, [(0x03, b"\x00" * 8)]))  # context 7 was not proposed
        kind, _ = read_pdu(sock)
    assert kind == pdu.A_ABORT
    assert instances(node) == []
    assert echo_ok(node.receiver.port)


def test_a_peer_that_aborts_mid_data_set_leaves_no_file(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    original = sample_paths()[0]
    ds = pydicom.dcmread(original)
    data = dataset_bytes(original)
    command = _store_command(str(ds.SOPInstanceUID))
    with connect(node.receiver.port) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == pdu.A_ASSOCIATE_AC
        sock.sendall(pdu.encode_p_data(1, [(0x03, command)]))
        sock.sendall(pdu.encode_p_data(1, [(0x00, data[: len(data) // 2])]))  # not the last
        sock.sendall(pdu.encode_abort(0, 0))
    assert echo_ok(node.receiver.port)
    assert instances(node) == []
    assert list((node.store.root / "tmp").iterdir()) == []


def _store_command(sop_instance_uid: str, message_id: int = 1) -> bytes:
    def element(tag: int, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00"
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value

    body = b"".join(
        [
            element(0x00000002, CT.encode()),
            element(0x00000100, struct.pack("<H", dimse.C_STORE_RQ)),
            element(0x00000110, struct.pack("<H", message_id)),
            element(0x00000700, struct.pack("<H", 0)),
            element(0x00000800, struct.pack("<H", 0x0000)),
            element(0x00001000, sop_instance_uid.encode()),
        ]
    )
    return element(0x00000000, struct.pack("<I", len(body))) + body


def test_small_pdus_and_many_fragments_arrive_byte_for_byte(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """DCMTK with its smallest PDU: a CT slice in dozens of P-DATA-TF PDUs."""
    node = start_node(make_settings())
    from dicomnode.synthetic import ct_series, write_series

    (path,) = write_series(ct_series(n_slices=1, rows=256, columns=256), tmp_path)
    sent = subprocess.run(
        [dcmtk_tool("storescu"), "--max-send-pdu", "4096", "-aec", NODE_AE]
        + ["127.0.0.1", str(node.receiver.port), str(path)],
        env=NODELAY_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (row,) = instances(node)
    assert dataset_bytes(node.store.root / row.path) == dataset_bytes(path)


def test_contexts_the_node_does_not_take_are_answered_per_context(
    make_settings, start_node
) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings())
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = [
        build_context(Verification),
        build_context("1.2.840.10008.5.1.4.1.2.2.1"),  # Study Root C-FIND: not served here
        build_context(CTImageStorage, ["1.2.3.4.5.6"]),  # no transfer syntax we know
    ]
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title=NODE_AE)
    assert assoc.is_established
    results = {
        str(cx.abstract_syntax): (cx.result, cx.transfer_syntax)
        for cx in assoc.accepted_contexts + assoc.rejected_contexts
    }
    assert results[Verification][0] == pdu.ACCEPTANCE
    assert results["1.2.840.10008.5.1.4.1.2.2.1"][0] == pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert results[CTImageStorage][0] == pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def _smoothed_rtt_us(sock: socket.socket) -> int:
    """The kernel's smoothed round-trip time of *sock* (Linux ``tcp_info.tcpi_rtt``, in µs)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 68)[0])


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux TCP only")
def test_a_sender_with_nagle_on_is_acknowledged_at_once(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    """pynetdicom, default socket: its data set PDU waits for the ACK of its command PDU.

    With Linux's delayed ACK that ACK came up to 40 ms late for every instance
    (~50 ms a C-STORE of CT_small instead of ~8 ms). The sender's own kernel
    measures it, independently of how fast this machine is: its smoothed RTT
    to the node was ~20 ms, and is ~0.2 ms once the node acknowledges at once.
    """
    from pydicom.uid import generate_uid

    node = start_node(make_settings())
    template = pydicom.dcmread(sample_paths()[0])
    ae = AE(ae_title="NAGLE")
    ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        sock = assoc.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # Nagle on
        for _ in range(40):
            template.SOPInstanceUID = generate_uid()
            assert assoc.send_c_store(template).Status == 0
        rtt = _smoothed_rtt_us(sock)
    finally:
        assoc.release()
    assert len(instances(node)) == 40
    assert rtt < 5000, f"the sender's smoothed RTT to the node is {rtt} µs: ACKs are delayed"
