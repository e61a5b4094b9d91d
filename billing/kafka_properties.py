"""User-supplied librdkafka properties: parsing, secrets read from files, and the rules.

Operators pass any librdkafka property (security.protocol, sasl.*, ssl.*, client.id, ...)
through BILLING_KAFKA_CONFIG (a JSON object) and BILLING_KAFKA_CONFIG_FILE (a Java-style
.properties file); the JSON object wins over the file for a key in both. A value written
``file:/path`` is replaced by that file's contents (whitespace stripped), so passwords and
keys can come from mounted secrets instead of the environment.

A few properties carry the service's guarantees (no lost or doubled events) or are set by
dedicated settings; they are refused here, at start, rather than silently overridden.
"""
from __future__ import annotations

from pathlib import Path

SECRET_PREFIX = "file:"

# property -> (accepted values, lower case; why). Setting one to its required value is allowed.
REQUIRED = {
    "enable.idempotence": (("true",), "producers must be idempotent: retries never duplicate or reorder"),
    "acks": (("all", "-1"), "producers wait for every in-sync replica, or a broker loss can lose events"),
    "enable.auto.commit": (("false",), "offsets live in PostgreSQL with the effects"),
    "enable.auto.offset.store": (("false",), "offsets live in PostgreSQL with the effects"),
    "isolation.level": (("read_committed",), "consumers never read aborted transactional messages"),
}
# property -> the setting to use instead.
OWN_SETTING = {
    "bootstrap.servers": "BILLING_KAFKA_BOOTSTRAP_SERVERS",
    "metadata.broker.list": "BILLING_KAFKA_BOOTSTRAP_SERVERS",
    "group.id": "(none: the service names its consumer groups)",
    "session.timeout.ms": "BILLING_KAFKA_SESSION_TIMEOUT_MS",
    "fetch.max.bytes": "BILLING_KAFKA_FETCH_MAX_BYTES",
    "max.partition.fetch.bytes": "BILLING_KAFKA_FETCH_MAX_BYTES",
    "receive.message.max.bytes": "BILLING_KAFKA_FETCH_MAX_BYTES",
}


class KafkaConfigError(ValueError):
    """A user-supplied Kafka property is unusable; the message names it and its source."""


def parse_properties(text: str, source: str = "properties") -> dict[str, str]:
    """A Java .properties text as a dict: `#`/`!` comments, `=`, `:` or whitespace between
    key and value, a trailing backslash continues the line, backslash escapes (\\t, \\n,
    \\uXXXX, an escaped separator)."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while _continues(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip()
            i += 1
        if _continues(line):
            line = line[:-1]
        key, value = _split(line)
        if not key:
            raise KafkaConfigError(f"{source}: a line without a key: {line[:60]!r}")
        out[_unescape(key, source)] = _unescape(value, source)
    return out


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _split(line: str) -> tuple[str, str]:
    j = 0
    while j < len(line):
        c = line[j]
        if c == "\\":
            j += 2
            continue
        if c in "=: \t\f":
            key = line[:j]
            rest = line[j:].lstrip(" \t\f")
            if rest[:1] in ("=", ":") and c in " \t\f":
                rest = rest[1:].lstrip(" \t\f")
            elif c in "=:":
                rest = line[j + 1:].lstrip(" \t\f")
            return key, rest
        j += 1
    return line, ""


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(s: str, source: str) -> str:
    if "\\" not in s:
        return s
    out, j = [], 0
    while j < len(s):
        c = s[j]
        if c != "\\" or j + 1 >= len(s):
            out.append(c)
            j += 1
            continue
        n = s[j + 1]
        if n == "u":
            try:
                out.append(chr(int(s[j + 2:j + 6], 16)))
            except ValueError:
                raise KafkaConfigError(f"{source}: bad \\u escape in {s[:60]!r}") from None
            j += 6
        else:
            out.append(_ESCAPES.get(n, n))
            j += 2
    return "".join(out)


def load_file(path: Path) -> dict[str, str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KafkaConfigError(f"BILLING_KAFKA_CONFIG_FILE: cannot read {path}: {exc.strerror or exc}") from None
    return parse_properties(text, f"BILLING_KAFKA_CONFIG_FILE {path}")


def merged(json_props: dict[str, str], file: Path | None) -> dict[str, tuple[str, str]]:
    """key -> (value, where it came from); the JSON object wins over the file."""
    out: dict[str, tuple[str, str]] = {}
    if file is not None:
        out.update({k: (v, f"BILLING_KAFKA_CONFIG_FILE {file}") for k, v in load_file(file).items()})
    out.update({k: (v, "BILLING_KAFKA_CONFIG") for k, v in json_props.items()})
    return out


def check(props: dict[str, tuple[str, str]]) -> None:
    """Refuse properties the service must own; check that every file: secret is readable."""
    for key, (value, source) in props.items():
        if key in OWN_SETTING:
            raise KafkaConfigError(f"{source}: {key!r} is not accepted here; use {OWN_SETTING[key]}")
        if key in REQUIRED:
            allowed, why = REQUIRED[key]
            if value.strip().lower() not in allowed:
                raise KafkaConfigError(f"{source}: {key}={value!r} is refused: the service needs "
                                       f"{key}={allowed[0]} ({why})")
        if value.startswith(SECRET_PREFIX):
            secret_path = Path(value[len(SECRET_PREFIX):])
            if not secret_path.is_file():
                raise KafkaConfigError(f"{source}: {key}: secret file {secret_path} does not exist")
            try:
                with secret_path.open("rb"):
                    pass
            except OSError as exc:
                raise KafkaConfigError(f"{source}: {key}: cannot read secret file {secret_path}: "
                                       f"{exc.strerror or exc}") from None


def resolve(props: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The properties with every ``file:`` value replaced by the file's stripped contents."""
    out = {}
    for key, (value, source) in props.items():
        if value.startswith(SECRET_PREFIX):
            secret_path = Path(value[len(SECRET_PREFIX):])
            try:
                value = secret_path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise KafkaConfigError(f"{source}: {key}: cannot read secret file {secret_path}: "
                                       f"{exc.strerror or exc}") from None
        out[key] = value
    return out


def stringify(value) -> str:
    """A JSON scalar as librdkafka text: true/false in lower case, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise KafkaConfigError(f"BILLING_KAFKA_CONFIG: values must be strings, numbers or booleans, "
                           f"got {type(value).__name__}")
