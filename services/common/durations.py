"""Durations in configuration files and on the command line: ``"30s"``, ``"5m"``,
``"250ms"``, ``"4h"``, ``"2d"`` or a plain number of seconds.

Example::

    >>> parse_duration("250ms"), parse_duration("5m"), parse_duration(3)
    (0.25, 300.0, 3.0)
"""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,9})?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds in ``value``; ``ValueError`` for anything else or a negative number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"bad duration {value!r}: use a number with ms, s, m, h or d (e.g. 30s, 5m)")
        seconds = float(m[1]) * _UNIT[m[2]]
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"duration must be a non-negative number, got {value!r}")
    return seconds
