"""The HTTP side port (/readyz, /healthz) as the tests read it: the status and the JSON body,
an error status (503: not ready) included."""
from __future__ import annotations

import json
import urllib.error
import urllib.request


def get_json(url: str, timeout_s: float = 5.0) -> tuple[int, dict | None]:
    """(status, JSON body) of a GET; (0, None) when nothing answers on the port."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, None
