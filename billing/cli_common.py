"""What the `billing` commands that call the API share: where the API is and which key to
send, one-line errors for a failed call, paging, and the output (JSON lines, or --table).

The address: --address, else BILLING_API_ADDRESS, else BILLING_GRPC_HOST:BILLING_GRPC_PORT
(the address `billing serve` listens on, a wildcard host read as 127.0.0.1). The key:
--api-key, else BILLING_API_KEY. Both settings are read like every other one, so the
file `billing dev` writes (<state dir>/env, with the demo tenant's key) points the
commands at the running stack with nothing exported.
"""
from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from billing.config import Settings
from billing.ops import reach

CALL_TIMEOUT_S = 15.0


class CommandError(RuntimeError):
    """A refusal the command explains in one line (bad input, a server out of reach)."""


def api_address(settings: Settings, flag: str | None) -> tuple[str, str]:
    """(address, what set it) for the messages that name it."""
    if flag:
        return flag, "--address"
    if settings.api_address:
        return settings.api_address, "BILLING_API_ADDRESS"
    host = "127.0.0.1" if settings.grpc_host in ("0.0.0.0", "", "::", "[::]") else settings.grpc_host
    return f"{host}:{settings.grpc_port}", "--address / BILLING_API_ADDRESS"


def api_key(settings: Settings, flag: str | None) -> tuple[str, str]:
    if flag:
        return flag, "--api-key"
    key = settings.api_key.get_secret_value()
    if key:
        where = "BILLING_API_KEY" if os.environ.get("BILLING_API_KEY") else "BILLING_API_KEY of the stack's env file"
        return key, where
    raise CommandError("no API key: pass --api-key or set BILLING_API_KEY (`billing dev` writes the demo "
                       "tenant's key to the stack's env file, which every command reads)")


def _read(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {setting} {path}: {exc.strerror or exc}") from None


def channel_credentials(settings: Settings) -> Any:
    """TLS when BILLING_API_TLS_CA_FILE is set (with a client certificate for mutual TLS);
    None: plaintext."""
    import grpc

    cert, key = settings.api_tls_cert_file, settings.api_tls_key_file
    if (cert is None) != (key is None):
        raise CommandError("BILLING_API_TLS_CERT_FILE and BILLING_API_TLS_KEY_FILE go together (mutual TLS)")
    if settings.api_tls_ca_file is None:
        if cert is not None:
            raise CommandError("BILLING_API_TLS_CERT_FILE needs BILLING_API_TLS_CA_FILE (the CA of the API's "
                               "certificate)")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.api_tls_ca_file, "BILLING_API_TLS_CA_FILE"),
        private_key=_read(key, "BILLING_API_TLS_KEY_FILE"),
        certificate_chain=_read(cert, "BILLING_API_TLS_CERT_FILE"))


class Api:
    """A blocking stub over one channel; every call has a deadline and fails as one line."""

    def __init__(self, settings: Settings, args: argparse.Namespace):
        import grpc

        from billing.v1 import billing_pb2_grpc

        self.address, self.address_source = api_address(settings, getattr(args, "address", None))
        key, self.key_source = api_key(settings, getattr(args, "api_key", None))
        reach.check_address("the billing API", self.address, self.address_source, 50051)
        credentials = channel_credentials(settings)
        self._channel = (grpc.secure_channel(self.address, credentials) if credentials
                         else grpc.insecure_channel(self.address))
        self._stub = billing_pb2_grpc.BillingServiceStub(self._channel)
        self._md = (("authorization", f"Bearer {key}"),)

    def __call__(self, method: str, request: Any) -> Any:
        import grpc

        try:
            return getattr(self._stub, method)(request, metadata=self._md, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CommandError(f"the billing API at {self.address} ({self.address_source}) is unavailable: "
                                   f"{details}") from None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise CommandError(f"{code.name}: {details} (the key from {self.key_source})") from None
            raise CommandError(f"{code.name}: {details}") from None

    def pages(self, method: str, request: Any, field: str, limit: int = 0) -> Iterator[Any]:
        """Every item of a List RPC, page after page (at most `limit`, 0 = all)."""
        seen = 0
        while True:
            response = self(method, request)
            for item in getattr(response, field):
                yield item
                seen += 1
                if limit and seen >= limit:
                    return
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def close(self) -> None:
        self._channel.close()


def connect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="host:port of the gRPC API (default: BILLING_API_ADDRESS, "
                                     "else BILLING_GRPC_HOST:BILLING_GRPC_PORT)")
    p.add_argument("--api-key", help="the tenant's API key (default: BILLING_API_KEY)")


def output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="store_true", help="a table for people instead of JSON lines")


def api_parsers(common: argparse.ArgumentParser) -> tuple[list[argparse.ArgumentParser], argparse.ArgumentParser]:
    """The parents of a client command (`common` with --debug, then --address, --api-key,
    --table), and the parent of a mutation (--request-id)."""
    api = argparse.ArgumentParser(add_help=False)
    connect_arguments(api)
    output_arguments(api)
    mutation = argparse.ArgumentParser(add_help=False)
    mutation.add_argument("--request-id", help="idempotency key of the call (default: a new UUID)")
    return [common, api], mutation


def listing_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: all, page after page)")
    p.add_argument("--page-size", type=int, default=100, help="rows per List call")


def request_id(args: argparse.Namespace) -> str:
    return getattr(args, "request_id", None) or str(uuid.uuid4())


def as_dict(message: Any) -> dict:
    """The proto3 JSON mapping with the proto's field names (enum names, RFC 3339 times,
    int64 as strings)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def json_default(value: Any) -> Any:
    """For decoded Avro records: times as RFC 3339, decimals and UUIDs as text."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def print_json(record: dict) -> None:
    print(json.dumps(record, default=json_default), flush=True)


Column = tuple[str, Callable[[dict], Any]]


def emit(messages: list[Any] | Iterator[Any], args: argparse.Namespace, columns: list[Column]) -> int:
    """JSON lines (one per message), or with --table a table of `columns`; the count."""
    rows = [as_dict(m) for m in messages]
    if getattr(args, "table", False):
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for name, _ in columns:
            table.add_column(name)
        for row in rows:
            table.add_row(*(str(get(row) or "") for _, get in columns))
        Console(width=max(160, Console().width)).print(table)
    else:
        for row in rows:
            print_json(row)
    return len(rows)


def enum_value(enum: Any, prefix: str, word: str | None) -> int:
    """`month` -> INTERVAL_UNIT_MONTH's number (argparse has checked the word already)."""
    return 0 if word is None else enum.Value(f"{prefix}{word.upper().replace('-', '_')}")


def enum_words(enum: Any, prefix: str) -> list[str]:
    return [name.removeprefix(prefix).lower().replace("_", "-") for name in enum.keys()
            if not name.endswith("_UNSPECIFIED")]


def timestamp(text: str | None, flag: str) -> Any:
    """An RFC 3339 time with its offset (`2026-11-01T00:00:00Z`) or `now`, as a Timestamp."""
    from google.protobuf.timestamp_pb2 import Timestamp

    if text is None:
        return None
    if text == "now":
        moment = datetime.now(timezone.utc)
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise CommandError(f"{flag}: not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z): {text!r}") from None
        if moment.tzinfo is None:
            raise CommandError(f"{flag}: the time needs its UTC offset (e.g. 2026-11-01T00:00:00Z): {text!r}")
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(timezone.utc))
    return stamp


def check_id(value: str, what: str) -> str:
    """Ids are UUIDs: a typo is refused here in one line instead of by the server."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise CommandError(f"{what} must be a UUID, got {value!r}") from None


@dataclass
class ApiCommand:
    """Runs `run(api, args)` with a connected Api and closes it afterwards."""

    run: Callable[[Api, argparse.Namespace], int]

    def __call__(self, args: argparse.Namespace) -> int:
        from billing.config import warn_unknown_env

        settings = Settings()
        warn_unknown_env()
        api = Api(settings, args)
        try:
            return self.run(api, args)
        finally:
            api.close()
