"""gRPC transport security from the settings: plaintext, TLS, or mutual TLS.

TLS when both a certificate and its key are configured; mutual TLS when a client CA is
configured too (a client without a certificate signed by it is refused in the handshake).
The files are read once, at start: a renewed certificate takes a restart.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A TLS setting that cannot work; the message names the setting."""


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @classmethod
    def from_settings(cls, settings) -> "ServerTls":
        return cls(_path(settings.grpc_tls_cert_file), _path(settings.grpc_tls_key_file),
                   _path(settings.grpc_tls_client_ca_file))

    @property
    def mode(self) -> str:
        """"plaintext", "tls" or "mtls"."""
        if self.cert_file is None:
            return "plaintext"
        return "mtls" if self.client_ca_file is not None else "tls"

    def credentials(self) -> grpc.ServerCredentials | None:
        """None for plaintext; raises TlsConfigError naming the setting that is wrong."""
        if (self.cert_file is None) != (self.key_file is None):
            missing = "grpc_tls_key_file" if self.key_file is None else "grpc_tls_cert_file"
            raise TlsConfigError(f"{missing} is not set: TLS needs both grpc_tls_cert_file and grpc_tls_key_file")
        if self.cert_file is None:
            if self.client_ca_file is not None:
                raise TlsConfigError("grpc_tls_client_ca_file is set but grpc_tls_cert_file is not: "
                                     "mutual TLS needs the server's own certificate and key")
            return None
        cert = _read(self.cert_file, "grpc_tls_cert_file")
        key = _read(self.key_file, "grpc_tls_key_file")
        client_ca = _read(self.client_ca_file, "grpc_tls_client_ca_file") if self.client_ca_file else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)


def _path(value) -> Path | None:
    # An empty environment variable means "not set", not the current directory.
    if value is None or str(value).strip() in ("", "."):
        return None
    return Path(value)


def _read(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{setting}: {path} is not a PEM file")
    return data
