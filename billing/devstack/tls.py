"""TLS material for the local SASL_SSL cluster: a CA and one server certificate, PEM.

Generated at start with `cryptography`, never committed: the brokers read them as PEM
keystores (ssl.keystore.type=PEM) and clients trust the CA (ssl.ca.location). The server
certificate names 127.0.0.1 and localhost, so clients can keep hostname verification on.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from billing.devstack.postgres import DevstackError


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # the CA certificate clients trust
    server_key: Path  # the server's private key, PKCS#8, unencrypted (a local stack)
    server_chain: Path  # the server's certificate followed by the CA's
    server_keystore: Path  # key + chain in one file: what Kafka's PEM keystore reads


def ensure_tls(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 30) -> TlsFiles:
    """Write the CA and the server certificate once; reuse them on later starts."""
    files = TlsFiles(directory / "ca.pem", directory / "server.key", directory / "server.pem",
                     directory / "server-keystore.pem")
    if all(p.exists() for p in (files.ca_cert, files.server_key, files.server_chain, files.server_keystore)):
        return files
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # an optional dependency: only the SASL_SSL stack needs it
        raise DevstackError("the SASL_SSL stack needs the `cryptography` package: pip install -e '.[devstack]'") from exc

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "billing devstack CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Brokers connect to each other with this certificate too, so both usages.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    chain = cert.public_bytes(pem) + ca_pem
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    files.ca_cert.write_bytes(ca_pem)
    files.server_chain.write_bytes(chain)
    files.server_key.write_bytes(key_pem)
    files.server_keystore.write_bytes(key_pem + chain)
    for secret in (files.server_key, files.server_keystore):
        secret.chmod(0o600)
    return files
