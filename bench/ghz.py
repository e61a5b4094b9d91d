"""ghz (github.com/bojand/ghz), the gRPC load generator the gRPC benches drive the server with.

Fifty Python client processes spend more CPU per call than the server they measure, on the
same two cores; ghz is one Go process that makes the same calls for a fraction of that, so
what a bench measures is the server, not its load generator (bench/README.md).

`ensure_ghz()` builds the pinned version once with `go install` into
~/.cache/billing-devstack/go (a bench's first run needs Go and the Go module proxy; never the
CI). `run()` runs it for a duration against one method with a JSON array of requests, sent
round-robin, and returns
`parse_report()` of its JSON report plus the CPU the ghz process used, from its own rusage.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from billing.config import Settings

VERSION = "v0.120.0"
MODULE = "github.com/bojand/ghz/cmd/ghz"
SERVICE = "billing.v1.BillingService"
ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "schemas" / "proto" / "billing" / "v1" / "billing.proto"
IMPORT_PATH = ROOT / "schemas" / "proto"


class GhzError(RuntimeError):
    pass


def go_binary() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")  # the official tarball's place, often not on PATH
    return str(fallback) if fallback.exists() else None


def ensure_ghz(cache_dir: Path | None = None) -> Path:
    """The path of the pinned ghz binary, built the first time with `go install`."""
    gopath = (cache_dir or Settings().kafka_cache_dir) / "go"
    binary = gopath / f"ghz-{VERSION}" / "ghz"
    if binary.exists():
        return binary
    go = go_binary()
    if go is None:
        raise GhzError(f"ghz {VERSION} is not built yet and building it needs Go (https://go.dev/dl/, "
                       f"`go` on PATH or /usr/local/go/bin/go); or run the bench with --client python")
    gopath.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="ghz-build-", dir=gopath))
    # -modcacherw: the module cache stays deletable with rm -rf, as the rest of the cache
    env = {**os.environ, "GOPATH": str(gopath), "GOBIN": str(staging), "GOFLAGS": "-modcacherw"}
    try:
        done = subprocess.run([go, "install", f"{MODULE}@{VERSION}"], env=env, capture_output=True, text=True,
                              timeout=900)
        if done.returncode != 0 or not (staging / "ghz").exists():
            raise GhzError(f"`go install {MODULE}@{VERSION}` failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / "ghz", binary)  # whole or absent: a build cut short leaves no binary
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return binary


def _ms(ns: int | float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 2)


def parse_report(report: dict, cpu_s: float | None = None) -> dict:
    """ghz's JSON report (`--format json`) -> the figures the benches print. Every call whose
    status is not OK is an error, whatever ghz's own error strings say; latencies (ns in
    the report) are those of the OK calls only, as ghz computes them without --count-errors."""
    statuses: dict[str, int] = {str(k): int(v) for k, v in (report.get("statusCodeDistribution") or {}).items()}
    count = int(report.get("count") or 0)
    ok = statuses.get("OK", 0)
    errors = max(count - ok, sum(n for code, n in statuses.items() if code != "OK"))
    seconds = (report.get("total") or 0) / 1e9
    marks = {int(d["percentage"]): d.get("latency") for d in report.get("latencyDistribution") or []}
    return {
        "calls": count, "ok": ok, "errors": errors,
        "error_codes": {code: n for code, n in statuses.items() if code != "OK"},
        "error_messages": dict(report.get("errorDistribution") or {}),
        "seconds": round(seconds, 2), "ok_per_s": round(ok / seconds) if seconds > 0 else 0,
        "p50_ms": _ms(marks.get(50)), "p90_ms": _ms(marks.get(90)), "p99_ms": _ms(marks.get(99)),
        "max_ms": _ms(report.get("slowest")) if ok else None,
        "end_reason": report.get("endReason"), "cpu_s": cpu_s,
        "cpu_us_per_call": round(cpu_s / ok * 1e6, 1) if cpu_s is not None and ok else None,
    }


def command(binary: Path, address: str, method: str, data_file: Path, api_key: str, *, concurrency: int,
            connections: int, seconds: float, output: Path, templates: bool = False,
            timeout_s: float = 10) -> list[str]:
    # ghz builds a template with sprig's ~200 functions for every call unless told not to: the
    # call data (`{{.UUID}}`, `{{.Timestamp}}`, `{{.RequestNumber}}`) is all a bench needs, and
    # without any template the requests are decoded once and reused.
    flags = ["--disable-template-functions"] + ([] if templates else ["--disable-template-data"])
    return [str(binary), "--proto", str(PROTO), "--import-paths", str(IMPORT_PATH),
            "--call", f"{SERVICE}/{method}", "--insecure", *flags,
            "--metadata", json.dumps({"authorization": f"Bearer {api_key}"}),
            "--data-file", str(data_file), "--concurrency", str(concurrency),
            "--connections", str(min(connections, concurrency)),  # ghz refuses more than concurrency
            "--duration", f"{seconds:g}s", "--duration-stop", "wait",  # calls in flight finish and count
            "--timeout", f"{timeout_s:g}s", "--format", "json", "--output", str(output), address]


def run(binary: Path, address: str, method: str, requests: list[dict], api_key: str, *, concurrency: int = 50,
        connections: int = 10, seconds: float = 30, templates: bool = False, workdir: Path | None = None) -> dict:
    """Runs ghz to the end; `parse_report()` of its report, with `cpu_s` the whole ghz process's
    CPU (user + system, from wait4: start-up and report writing included, so a bound from above).
    `templates`: the requests hold ghz call-data actions (`"{{.UUID}}"`), evaluated per call."""
    work = Path(tempfile.mkdtemp(prefix="ghz-", dir=workdir))
    data_file, output, log = work / "requests.json", work / "report.json", work / "ghz.log"
    data_file.write_text(json.dumps(requests))
    with open(log, "w") as err:
        proc = subprocess.Popen(command(binary, address, method, data_file, api_key, concurrency=concurrency,
                                        connections=connections, seconds=seconds, output=output,
                                        templates=templates),
                                stdout=err, stderr=err)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not output.exists():
        raise GhzError(f"ghz exited with {proc.returncode}: {log.read_text().strip()[-2000:]}")
    result = parse_report(json.loads(output.read_text()), usage.ru_utime + usage.ru_stime)
    shutil.rmtree(work, ignore_errors=True)
    return result
