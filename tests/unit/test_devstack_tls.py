"""The local cluster's TLS material: a client that trusts only the CA completes a verified
handshake with the server certificate, for 127.0.0.1 and for localhost."""
from __future__ import annotations

import socket
import ssl
import threading

import pytest

from billing.devstack.tls import ensure_tls


def _handshake(files, server_hostname: str) -> str:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_chain, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))  # hostname checked, CA only
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                tls.sendall(b"ok")
        except BaseException as exc:  # noqa: BLE001 - reported by the client side's assertion
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as tls:
            return tls.recv(2).decode()
    finally:
        thread.join(timeout=10)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_server_certificate_verifies_against_the_ca(tmp_path, host):
    files = ensure_tls(tmp_path)
    assert _handshake(files, host) == "ok"


def test_another_name_is_refused(tmp_path):
    files = ensure_tls(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files, "example.com")


def test_keystore_holds_the_key_and_the_chain_and_is_kept(tmp_path):
    files = ensure_tls(tmp_path)
    keystore = files.server_keystore.read_text()
    # Kafka's PEM keystore: a PKCS#8 key, then the certificate chain (server, then CA).
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----")
    assert keystore.count("-----BEGIN CERTIFICATE-----") == 2
    assert files.server_keystore.stat().st_mode & 0o777 == 0o600
    again = ensure_tls(tmp_path)  # a restart reuses them: clients keep trusting the same CA
    assert again.ca_cert.read_bytes() == files.ca_cert.read_bytes()
    assert again.server_keystore.read_text() == keystore
