"""Outcomes seen by the fuzz tests: (area, name) -> Counter of status names."""
from __future__ import annotations

from collections import Counter, defaultdict

TALLY: dict[tuple[str, str], Counter] = defaultdict(Counter)
