"""Can this process reach its servers at all? A TCP connection to each address, bounded by a
few seconds, before a command starts on them: an unreachable server becomes one line naming
the address tried and the setting that changes it, instead of the clients' own retries
(asyncpg's 60 s connect timeout, librdkafka's endless reconnects) ending in a traceback.

Only reachability is checked here; authentication and everything after is the clients'
business. Addresses the check cannot parse (Unix sockets, `host=` in the query string) are
left to the client.
"""
from __future__ import annotations

import socket
from urllib.parse import parse_qs, unquote, urlsplit


class Unreachable(RuntimeError):
    """One line: which server, at which address, which setting points there, and why."""


def _host_port(item: str, default_port: int) -> tuple[str, int] | None:
    item = item.strip()
    if "://" in item:  # Kafka listeners may be written as PLAINTEXT://host:port
        item = item.split("://", 1)[1]
    if not item:
        return None
    if item.startswith("["):  # [::1]:5432
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    elif item.count(":") == 1:
        host, port = item.split(":")
    else:
        host, port = item, ""
    try:
        return unquote(host), int(port) if port else default_port
    except ValueError:
        return None


def postgres_addresses(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a postgresql:// URL; [] when it names none we can check."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        return []
    query = parse_qs(parts.query)
    if "host" in query or "port" in query or "hostaddr" in query:
        return []
    netloc = parts.netloc.rpartition("@")[2]
    found = [_host_port(item, 5432) for item in netloc.split(",")] if netloc else []
    return [a for a in found if a is not None and a[0] and not a[0].startswith("/")]


def kafka_addresses(bootstrap: str) -> list[tuple[str, int]]:
    return [a for a in (_host_port(item, 9092) for item in bootstrap.split(",")) if a is not None]


def _first_reachable(addresses: list[tuple[str, int]], timeout_s: float) -> str | None:
    """None when one of the addresses accepts a connection, else why the first did not."""
    reason = None
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return None
        except socket.gaierror as exc:
            reason = reason or f"unknown host ({exc.strerror})"
        except TimeoutError:
            reason = reason or f"no answer within {timeout_s:g} s"
        except OSError as exc:
            reason = reason or (exc.strerror or type(exc).__name__).lower()
    return reason


def _check(what: str, addresses: list[tuple[str, int]], setting: str, timeout_s: float) -> None:
    if not addresses:
        return
    reason = _first_reachable(addresses, timeout_s)
    if reason is not None:
        shown = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)
        raise Unreachable(f"cannot reach {what} at {shown} ({setting}): {reason}")


def check_postgres(url: str, setting: str, timeout_s: float = 3.0) -> None:
    _check("PostgreSQL", postgres_addresses(url), setting, timeout_s)


def check_kafka(bootstrap: str, setting: str = "BILLING_KAFKA_BOOTSTRAP_SERVERS", timeout_s: float = 3.0) -> None:
    _check("Kafka", kafka_addresses(bootstrap), setting, timeout_s)


def check_can_listen(what: str, host: str, port: int, setting: str) -> None:
    """Refuse at once when another process holds the port (port 0: any free one, nothing to check)."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
            raise Unreachable(f"cannot listen for {what} on {host}:{port} ({setting}): {reason}") from None


def check_address(what: str, address: str, setting: str, default_port: int, timeout_s: float = 3.0) -> None:
    """A host:port address of another kind (the gRPC API for the client commands)."""
    found = _host_port(address, default_port)
    if found is None or not found[0]:
        raise Unreachable(f"not a host:port address for {what}: {address!r} ({setting})")
    _check(what, [found], setting, timeout_s)
