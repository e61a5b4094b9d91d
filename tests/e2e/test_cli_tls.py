"""The client commands over TLS and mutual TLS (BILLING_API_TLS_*), against the real server
with certificates made here; a client without the CA, or without its certificate under
mutual TLS, fails in one line."""
from __future__ import annotations

import pytest

from billing.api.tls import ServerTls
from tests.certs import CertificateAuthority
from tests.e2e.test_cli_api import cli, ok, one_line
from tests.e2e.test_process import _env
from tests.integration.test_grpc_tls import _served


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli-pki")
    ca = CertificateAuthority()
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    server = ca.issue("billing-api", server=True).write(directory, "server")
    client = ca.issue("client-a", server=False).write(directory, "client")
    return {"dir": directory, "server": server, "client": client}


async def test_tls_and_mutual_tls(migrated, service, tenant, pki):
    ca = str(pki["dir"] / "ca.crt")
    for mutual in (False, True):
        cert, key = pki["server"]
        server = await _served(service, ServerTls(cert, key, pki["dir"] / "ca.crt" if mutual else None))
        try:
            env = _env(migrated, BILLING_API_ADDRESS=f"localhost:{server.port}", BILLING_API_KEY=tenant.api_key)
            plaintext = one_line(await cli("plans", "list", env=env))
            assert plaintext.startswith(f"billing plans list: the billing API at localhost:{server.port} "
                                        "(BILLING_API_ADDRESS) is unavailable"), plaintext
            env["BILLING_API_TLS_CA_FILE"] = ca
            if mutual:
                assert "is unavailable" in one_line(await cli("plans", "list", env=env))  # no client certificate
                env["BILLING_API_TLS_CERT_FILE"], env["BILLING_API_TLS_KEY_FILE"] = map(str, pki["client"])
            assert ok(await cli("plans", "list", env=env)) == []
        finally:
            await server.stop(0)


@pytest.mark.parametrize("tls,expected", [
    ({"BILLING_API_TLS_CA_FILE": "/nonexistent/ca.crt"}, "cannot read BILLING_API_TLS_CA_FILE /nonexistent/ca.crt"),
    ({"BILLING_API_TLS_CA_FILE": "x", "BILLING_API_TLS_CERT_FILE": "y"}, "go together (mutual TLS)"),
    ({"BILLING_API_TLS_CERT_FILE": "y", "BILLING_API_TLS_KEY_FILE": "z"}, "needs BILLING_API_TLS_CA_FILE"),
])
async def test_bad_tls_settings_are_one_line(migrated, service, tenant, tls, expected):
    env = _env(migrated, BILLING_API_ADDRESS=service.grpc.address, BILLING_API_KEY=tenant.api_key, **tls)
    assert expected in one_line(await cli("runs", "list", env=env))
