"""DICOM TLS on the receiver: server certificate and client-certificate verification."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import NODE_AE
from tests.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_echo(port: int, pki: Path, *, with_client_cert: bool) -> bool:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if with_client_cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE, tls_args=(ctx, "127.0.0.1"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0


def test_tls_with_client_certificate_verification(make_settings, start_node, pki: Path) -> None:  # type: ignore[no-untyped-def]
    tls = {
        "enabled": True,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
        "ca_certificates": str(pki / "ca.pem"),
        "require_client_certificate": True,
    }
    node = start_node(make_settings(node={"tls": tls}))
    port = node.receiver.port
    assert tls_echo(port, pki, with_client_cert=True)
    assert not tls_echo(port, pki, with_client_cert=False)  # refused in the handshake
    assert tls_echo(port, pki, with_client_cert=True)  # and the node still serves


def test_tls_config_needs_its_files(make_settings) -> None:  # type: ignore[no-untyped-def]
    from dicomnode.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="node.tls: certificate and private_key are required"):
        load_settings(None, resolve=False, environ={"DICOMNODE_NODE__TLS__ENABLED": "true"})
