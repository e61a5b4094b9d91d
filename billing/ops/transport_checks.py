"""What travels in clear, told at start: a plaintext gRPC port, and database URLs to a
non-local host without `sslmode=verify-full`.

Only warnings: a service behind a TLS-terminating proxy, or on a private network, may run
this way on purpose. The database URLs are never logged (they hold the password): only the
setting's name, the host and the sslmode.
"""
from __future__ import annotations

import ipaddress
import os
from urllib.parse import parse_qs, unquote, urlsplit

# Weakest first. asyncpg's default when the URL and PGSSLMODE say nothing is "prefer":
# TLS if the server offers it, with no certificate check (an interceptor just declines it).
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_SSLMODE = "prefer"


def database_urls(settings) -> dict[str, str]:
    """Every configured database URL, by setting name (`database_url`, `admin_database_url`, and
    any other `*database_url` setting: a role of its own for the relay, say)."""
    return {name: value for name, value in settings.model_dump().items()
            if name.endswith("database_url") and isinstance(value, str) and value}


def url_hosts(url: str) -> list[str]:
    """The hosts a libpq-style URL names (several when comma-separated; `host=` in the query
    wins, as in libpq). An empty list: the default Unix socket."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if "host" in query:
        return [h for v in query["host"] for h in v.split(",") if h]
    netloc = parts.netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        item = unquote(item)
        if item.startswith("["):
            hosts.append(item[1:item.index("]")] if "]" in item else item[1:])
        elif item:
            hosts.append(item.rsplit(":", 1)[0] if item.count(":") == 1 else item)
    return hosts


def is_local(host: str) -> bool:
    if host.startswith("/") or host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sslmode(url: str) -> str:
    values = parse_qs(urlsplit(url).query).get("sslmode")
    return (values[-1] if values else os.environ.get("PGSSLMODE") or DEFAULT_SSLMODE).lower()


def database_warnings(settings) -> list[str]:
    warnings = []
    for name, url in database_urls(settings).items():
        remote = [h for h in url_hosts(url) if not is_local(h)]
        mode = sslmode(url)
        if remote and mode != "verify-full":
            warnings.append(
                f"{name}: host {', '.join(remote)} is not local and sslmode is {mode}: the connection can be "
                "read or intercepted; add sslmode=verify-full (and sslrootcert=<CA file>) to the URL")
    return warnings


def grpc_warning(tls_mode: str, address: str) -> str | None:
    if tls_mode != "plaintext":
        return None
    return (f"gRPC on {address} is plaintext: API keys cross the network in clear; set "
            "BILLING_GRPC_TLS_CERT_FILE and BILLING_GRPC_TLS_KEY_FILE (and BILLING_GRPC_TLS_CLIENT_CA_FILE for "
            "mutual TLS) unless a TLS proxy in front of this port does it")
