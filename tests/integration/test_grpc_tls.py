"""gRPC over TLS and mutual TLS, with certificates made here; plaintext refused when TLS is on."""
from __future__ import annotations

import logging

import grpc
import pytest

from billing.api.server import GrpcServer
from billing.api.tls import ServerTls, TlsConfigError
from billing.devstack import free_port
from billing.v1 import billing_pb2 as pb
from billing.v1 import billing_pb2_grpc
from tests.certs import CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = CertificateAuthority(), CertificateAuthority("someone else's CA")
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    server_cert, server_key = ca.issue("billing-api", server=True).write(directory, "server")
    return {"dir": directory, "ca": ca, "other_ca": other_ca, "server": (server_cert, server_key),
            "client": ca.issue("client-a", server=False), "stranger": other_ca.issue("client-x", server=False)}


async def _served(service, tls: ServerTls) -> GrpcServer:
    server = GrpcServer(service.db, "127.0.0.1", 0, usage=service.components.usage,
                        run_shards=service.components.runs.shards, tls=tls)
    await server.start()
    await server.set_serving(True)
    return server


async def _list_plans(channel: grpc.aio.Channel, tenant) -> grpc.StatusCode:
    try:
        await billing_pb2_grpc.BillingServiceStub(channel).ListPlans(pb.ListPlansRequest(), metadata=tenant.md,
                                                                     timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_tls_client_with_the_ca_works_and_plaintext_is_refused(service, tenant, pki):
    cert, key = pki["server"]
    server = await _served(service, ServerTls(cert, key))
    try:
        assert server.tls.mode == "tls"
        good = grpc.ssl_channel_credentials(root_certificates=pki["ca"].cert_pem)
        async with grpc.aio.secure_channel(f"localhost:{server.port}", good) as channel:
            assert await _list_plans(channel, tenant) == grpc.StatusCode.OK
        # the API key never crosses in clear: a plaintext client gets no answer at all
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await _list_plans(channel, tenant) == grpc.StatusCode.UNAVAILABLE
        # a client that trusts another CA refuses the server's certificate
        wrong = grpc.ssl_channel_credentials(root_certificates=pki["other_ca"].cert_pem)
        async with grpc.aio.secure_channel(f"localhost:{server.port}", wrong) as channel:
            assert await _list_plans(channel, tenant) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_mutual_tls_needs_a_client_certificate_signed_by_the_client_ca(service, tenant, pki):
    cert, key = pki["server"]
    server = await _served(service, ServerTls(cert, key, pki["dir"] / "ca.crt"))
    root = pki["ca"].cert_pem
    try:
        assert server.tls.mode == "mtls"
        outcomes = {}
        for name, client in (("none", None), ("stranger", pki["stranger"]), ("signed", pki["client"])):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=client.key if client else None,
                certificate_chain=client.cert if client else None)
            async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
                outcomes[name] = await _list_plans(channel, tenant)
        assert outcomes == {"none": grpc.StatusCode.UNAVAILABLE, "stranger": grpc.StatusCode.UNAVAILABLE,
                            "signed": grpc.StatusCode.OK}
    finally:
        await server.stop(0)


def test_a_tls_setting_that_cannot_work_names_the_setting(pki, tmp_path):
    cert, key = pki["server"]
    with pytest.raises(TlsConfigError, match="grpc_tls_key_file is not set"):
        ServerTls(cert, None).credentials()
    with pytest.raises(TlsConfigError, match="grpc_tls_client_ca_file is set but grpc_tls_cert_file is not"):
        ServerTls(None, None, pki["dir"] / "ca.crt").credentials()
    with pytest.raises(TlsConfigError, match="grpc_tls_cert_file: cannot read"):
        ServerTls(tmp_path / "absent.crt", key).credentials()
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(TlsConfigError, match="grpc_tls_key_file: .* is not a PEM file"):
        ServerTls(cert, tmp_path / "junk.key").credentials()


async def test_the_service_takes_tls_from_its_settings_and_warns_when_plaintext(migrated, tenant, pki, caplog):
    from billing.runtime import Service

    cert, key = pki["server"]
    started = {}
    for mode, extra in (("plaintext", {}), ("tls", {"grpc_tls_cert_file": cert, "grpc_tls_key_file": key})):
        settings = migrated.model_copy(update={"grpc_port": 0, "http_port": free_port(), **extra})
        svc = Service(settings, roles=("api",))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="billing.runtime"):
            await svc.start()
        try:
            started[mode] = (svc.grpc.tls.mode, any("is plaintext" in r.getMessage() for r in caplog.records))
            if mode == "tls":
                good = grpc.ssl_channel_credentials(root_certificates=pki["ca"].cert_pem)
                async with grpc.aio.secure_channel(f"localhost:{svc.grpc.port}", good) as channel:
                    assert await _list_plans(channel, tenant) == grpc.StatusCode.OK
        finally:
            await svc.stop()
    assert started == {"plaintext": ("plaintext", True), "tls": ("tls", False)}
