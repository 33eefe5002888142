"""A stream monitor's state as a typed, versioned JSON document (never pickle).

The drift service checkpoints every stream's monitor into a changelog-backed faust
table. What is read back from Kafka is untrusted (anyone who could write the changelog
topic could otherwise run code on the drift workers), so the document is plain JSON:
numbers, strings, lists and numeric arrays (``{"f8": <base64 little-endian float64>,
"shape": [...]}``, decoded with a fixed dtype, never an object array), and it is
checked against the shape each detector expects. Sizes are bounded by the detectors'
own windows.

- Windowed detectors (KS, chi-squared, MMD) round-trip exactly (reference, current
  window, counters and the alarm latch), except the raw embeddings of an MMD reference
  that is still filling up, kept in float32 so a checkpoint stays well under Kafka's
  1 MB message limit (the pinned projection is exact).
- The warm-up ADWIN (river's, for a numeric feature's first 2,000 events) is rebuilt by
  replaying the values it saw since its last alarm (its internals have no stable form).
- The CUSUMs (mean shift, rate) round-trip exactly too: a handful of numbers per
  design, the reference's moments, the values waiting to join the reference (at most
  ``LAG``) and the open episode.

``FORMAT_VERSION`` names the layout. A document of another version, or one that does not
parse, is not guessed at: the monitor starts afresh and the reason is logged (the
windowed detectors then warm up again, as for a new stream).

Example::

    >>> doc = dump_monitor(monitor)              # doctest: +SKIP
    >>> again = load_monitor(doc, calibration)   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter, deque
from typing import Any

import numpy as np

from services.drift.detectors import CusumNumeric, CusumRate, WarmupADWIN, WindowChi2, WindowKS, WindowMMD
from services.drift.monitor import StreamMonitor

# 2: CUSUMs in place of river's ADWIN/DDM; ended episodes. A version-1 checkpoint is not
# guessed at: its stream starts afresh (logged).
FORMAT_VERSION = 2
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


class StateError(ValueError):
    """A checkpoint that cannot be restored (unknown version, wrong shape, bad values)."""


# -- numeric arrays ----------------------------------------------------------------------
def _arr(a: Any, dtype: str = "f8") -> dict[str, Any] | None:
    if a is None:
        return None
    a = np.ascontiguousarray(np.asarray(a, dtype="<" + dtype))
    return {dtype: base64.b64encode(a.tobytes()).decode("ascii"), "shape": list(a.shape)}


def _unarr(d: Any, ndim: int) -> np.ndarray | None:
    if d is None:
        return None
    dtype = "f8" if isinstance(d, dict) and "f8" in d else "f4"
    if not isinstance(d, dict) or not isinstance(d.get(dtype), str) or not isinstance(d.get("shape"), list):
        raise StateError("array: expected {'f8' or 'f4': base64, 'shape': [...]}")
    shape = d["shape"]
    if len(shape) != ndim or not all(isinstance(n, int) and 0 <= n <= 1_000_000 for n in shape):
        raise StateError(f"array: bad shape {shape!r}")
    try:
        raw = base64.b64decode(d[dtype], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StateError(f"array: bad base64: {exc}") from exc
    size = 8 if dtype == "f8" else 4
    if len(raw) != size * int(np.prod(shape, dtype=np.int64)):
        raise StateError("array: size does not match its shape")
    return np.frombuffer(raw, dtype="<" + dtype).astype("<f8").reshape(shape)


def _floats(v: Any, what: str) -> list[float]:
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise StateError(f"{what}: expected a list of numbers")
    return [float(x) for x in v]


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise StateError(f"{what}: expected a non-negative integer")
    return v


# -- detectors ---------------------------------------------------------------------------
def _dump_detector(d: Any) -> dict[str, Any]:
    if isinstance(d, WindowKS):
        return {
            "type": "ks",
            "episode_position": d.episode_position,
            "seen": d.seen,
            "in_alarm": d.in_alarm,
            "calm": getattr(d, "calm", 0),
            "reference": list(d.reference),
            "current": list(d.current),
        }
    if isinstance(d, WindowChi2):
        return {
            "type": "chi2",
            "episode_position": d.episode_position,
            "seen": d.seen,
            "in_alarm": d.in_alarm,
            "calm": getattr(d, "calm", 0),
            "pinned": bool(getattr(d, "pinned", False)),
            "reference": dict(d.reference),
            "current": list(d.current),
        }
    if isinstance(d, WindowMMD):
        return {
            "type": "mmd",
            "episode_position": d.episode_position,
            "seen": d.seen,
            "in_alarm": d.in_alarm,
            "sigma": d.sigma,
            # the raw embeddings of a reference still filling up are kept in float32: 200
            # of 576 dimensions stay well under Kafka's 1 MB message limit
            "reference": _arr(np.asarray(d.reference), "f4") if d.reference else None,
            "mean": _arr(d.mean),
            "basis": _arr(d.basis),
            "ref_z": _arr(d.ref_z),
            "current": _arr(np.asarray(d.current)) if d.current else None,
            "positions": list(d.positions),
        }
    if isinstance(d, WarmupADWIN):  # river's ADWIN has no stable serialised form: replayed
        return {"type": "adwin_warmup", "seen": d.seen, "replay": [] if d.retired else list(d.history)}
    if isinstance(d, (CusumNumeric, CusumRate)):
        c = d.detector
        doc = {
            "type": "cusum_mean" if isinstance(d, CusumNumeric) else "cusum_rate",
            "sides": c.sides,
            "n": c.n,
            "pinned": c.pinned,
            "moments": list(c.moments),
            "pending": "".join("1" if u else "0" for u in c.pending) if isinstance(d, CusumRate) else list(c.pending),
            "s": list(c.s),
            "start": list(c.start),
            "total": list(c.total),
            "episode": dict(c.episode) if c.episode is not None else None,
            "episode_position": d.episode_position,
        }
        if isinstance(d, CusumNumeric):
            doc["first"], doc["points"] = list(c.first), list(c.points)
        return doc
    raise StateError(f"no state layout for detector {type(d).__name__}")


def _check_same(fresh: Any, doc: dict[str, Any]) -> None:
    want = _dump_detector(fresh)["type"]
    if doc.get("type") != want:
        raise StateError(f"detector type {doc.get('type')!r} where {want!r} was expected")


def _load_detector(fresh: Any, doc: Any) -> Any:
    """Fill ``fresh`` (built from the current calibration) with the saved state."""
    if not isinstance(doc, dict):
        raise StateError("detector: expected an object")
    _check_same(fresh, doc)
    kind = doc["type"]
    if kind in ("ks", "chi2", "mmd"):
        fresh.seen = _int(doc.get("seen"), "seen")
        fresh.in_alarm = bool(doc.get("in_alarm"))
        fresh.calm = _int(doc.get("calm", 0), "calm")  # absent in checkpoints from before hysteresis
        pos = doc.get("episode_position")
        fresh.episode_position = None if pos is None else int(_floats([pos], "episode_position")[0])
    if kind == "ks":
        fresh.reference = _floats(doc.get("reference"), "ks.reference")[: fresh.reference_size]
        fresh.current.extend(_floats(doc.get("current"), "ks.current"))
    elif kind == "chi2":
        ref = doc.get("reference")
        if not isinstance(ref, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in ref.items()):
            raise StateError("chi2.reference: expected category counts")
        cur = doc.get("current")
        if not isinstance(cur, list) or not all(isinstance(c, str) for c in cur):
            raise StateError("chi2.current: expected categories")
        fresh.reference, fresh.pinned = Counter(ref), bool(doc.get("pinned"))
        fresh.current.extend(cur)
    elif kind == "mmd":
        ref = _unarr(doc.get("reference"), 2)
        fresh.reference = list(ref) if ref is not None else []
        fresh.mean, fresh.basis, fresh.ref_z = (
            _unarr(doc.get("mean"), 1),
            _unarr(doc.get("basis"), 2),
            _unarr(doc.get("ref_z"), 2),
        )
        if (fresh.ref_z is None) != (fresh.mean is None) or (fresh.ref_z is None) != (fresh.basis is None):
            raise StateError("mmd: a pinned reference needs mean, basis and projection")
        sigma = doc.get("sigma")
        if not isinstance(sigma, (int, float)) or not sigma > 0:
            raise StateError("mmd.sigma: expected a positive number")
        fresh.sigma = float(sigma)
        cur = _unarr(doc.get("current"), 2)
        if cur is not None:
            fresh.current.extend(list(cur))
        fresh.positions.extend(int(p) for p in _floats(doc.get("positions"), "mmd.positions"))
    elif kind in ("cusum_mean", "cusum_rate"):
        _load_cusum(fresh, doc)
    elif kind == "adwin_warmup":
        replay = _floats(doc.get("replay"), "adwin.replay")
        if len(replay) > fresh.warmup:
            raise StateError("adwin.replay: longer than the warm-up")
        fresh.replay(replay, _int(doc.get("seen"), "adwin.seen"))
    return fresh


def _load_cusum(fresh: Any, doc: dict[str, Any]) -> None:
    c = fresh.detector
    if doc.get("sides") != c.sides:  # configuration changed: the saved sums meant another test
        raise StateError(f"cusum sides {doc.get('sides')!r} where {c.sides!r} is configured")
    c.n = _int(doc.get("n"), "cusum.n")
    c.pinned = bool(doc.get("pinned"))
    moments = _floats(doc.get("moments"), "cusum.moments")
    if len(moments) != 3 or moments[0] < 0 or moments[2] < 0:
        raise StateError("cusum.moments: expected [count, mean, M2]")
    c.moments = moments
    if doc["type"] == "cusum_mean":
        first, points = _floats(doc.get("first"), "cusum.first"), _floats(doc.get("points"), "cusum.points")
        if len(first) > c.reference_size or len(points) not in (0, c.QUANTILES + 1) or points != sorted(points):
            raise StateError("cusum: expected the reference's first values or its sorted quantiles")
        c.first = first
        if points:
            c._set_points(points)
    if c.pinned:
        c._arm()
        k = len(c.s)
        s, total = _floats(doc.get("s"), "cusum.s"), _floats(doc.get("total"), "cusum.total")
        start = doc.get("start")
        if len(s) != k or len(total) != k or not isinstance(start, list) or len(start) != k:
            raise StateError(f"cusum: expected {k} designs")
        c.s, c.total, c.start = s, total, [_int(x, "cusum.start") for x in start]
    raw = doc.get("pending")
    if doc["type"] == "cusum_rate":  # 0/1 values as a string of digits: 20,000 of them stay small
        if not isinstance(raw, str) or raw.strip("01"):
            raise StateError("cusum.pending: expected a string of 0 and 1")
        pending = [float(ch == "1") for ch in raw]
    else:
        pending = _floats(raw, "cusum.pending")
    if len(pending) > max(c._lag, c.LAG):
        raise StateError("cusum.pending: longer than the lag")
    c.pending = deque(pending)
    episode = doc.get("episode")
    if episode is not None:
        if not isinstance(episode, dict) or set(episode) != {"level", "back", "a", "b", "c"}:
            raise StateError("cusum.episode: expected level, back, a, b, c")
        c.episode = dict(zip(episode, _floats(list(episode.values()), "cusum.episode")))
    pos = doc.get("episode_position")
    fresh.episode_position = None if pos is None else int(_floats([pos], "cusum.episode_position")[0])


# -- monitors ----------------------------------------------------------------------------
def dump_monitor(mon: StreamMonitor) -> bytes:
    doc = {
        "format": "argus.drift.monitor",
        "version": FORMAT_VERSION,
        "stream": mon.stream,
        "position": mon.position,
        "alarms": mon.alarms,
        "recent_ids": list(mon.recent_ids),
        "open": dict(mon.open),
        "detectors": {
            feature: {"kind": mon.kinds[feature], "detectors": [_dump_detector(d) for d in dets]}
            for feature, dets in mon.detectors.items()
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def load_monitor(raw: bytes, calibration: dict[str, Any], semantic: Any = None) -> StreamMonitor:
    """The monitor a checkpoint describes, rebuilt with the current calibration;
    :class:`StateError` when the document is not one this version can restore."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise StateError(f"checkpoint of {len(raw)} bytes is over the {MAX_DOCUMENT_BYTES} byte limit")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"not a JSON checkpoint: {exc.__class__.__name__}") from exc
    if not isinstance(doc, dict) or doc.get("format") != "argus.drift.monitor":
        raise StateError("not a drift monitor checkpoint")
    if doc.get("version") != FORMAT_VERSION:
        raise StateError(f"checkpoint format version {doc.get('version')!r}; this worker reads {FORMAT_VERSION}")
    stream = doc.get("stream")
    if not isinstance(stream, str):
        raise StateError("stream: expected a string")
    mon = StreamMonitor(stream, calibration)
    mon.position = _int(doc.get("position"), "position")
    mon.alarms = _int(doc.get("alarms"), "alarms")
    ids = doc.get("recent_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise StateError("recent_ids: expected strings")
    mon.recent_ids.extend(ids)
    opened = doc.get("open", {})
    if not isinstance(opened, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in opened.items()):
        raise StateError("open: expected feature -> detector names")
    mon.open = dict(opened)
    detectors = doc.get("detectors")
    if not isinstance(detectors, dict):
        raise StateError("detectors: expected an object")
    for feature, entry in detectors.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("detectors"), list):
            raise StateError(f"{feature}: expected its kind and detectors")
        fresh = mon.new_detectors(feature, entry.get("kind"), semantic)
        if len(fresh) != len(entry["detectors"]):
            raise StateError(f"{feature}: {len(entry['detectors'])} detectors saved, {len(fresh)} expected")
        mon.detectors[feature] = [_load_detector(d, saved) for d, saved in zip(fresh, entry["detectors"])]
        mon.kinds[feature] = entry["kind"]
    return mon
