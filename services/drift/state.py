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
- river's detectors (``ADWIN``, ``DDM``) keep their internals in compiled objects that
  have no stable public form, so they are rebuilt by replaying the recent values they
  were fed since their last reset (up to :data:`RIVER_REPLAY_CAP`): a *re-warm* that
  keeps their recent window; an alarm latched before the checkpoint is not repeated,
  because replayed alarms are discarded.

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

from services.drift.detectors import RIVER_HISTORY, RiverBinary, RiverNumeric, WindowChi2, WindowKS, WindowMMD
from services.drift.monitor import StreamMonitor

FORMAT_VERSION = 1
RIVER_REPLAY_CAP = RIVER_HISTORY
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
            "seen": d.seen,
            "in_alarm": d.in_alarm,
            "calm": getattr(d, "calm", 0),
            "reference": list(d.reference),
            "current": list(d.current),
        }
    if isinstance(d, WindowChi2):
        return {
            "type": "chi2",
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
    if isinstance(d, RiverNumeric):
        return {"type": "river_numeric", "kind": d.kind, "replay": list(d.history)[-RIVER_REPLAY_CAP:]}
    if isinstance(d, RiverBinary):
        return {
            "type": "river_binary",
            "n": d.n,
            "ones": d.ones,
            "recent": list(d.recent),
            "replay": [int(x) for x in list(d.history)[-RIVER_REPLAY_CAP:]],
        }
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
    elif kind == "river_numeric":
        if doc.get("kind") != fresh.kind:
            raise StateError(f"river detector {doc.get('kind')!r} where {fresh.kind!r} was expected")
        fresh.replay(_floats(doc.get("replay"), "river.replay"))
    elif kind == "river_binary":
        replay = doc.get("replay")
        if not isinstance(replay, list) or not all(x in (0, 1) for x in replay):
            raise StateError("ddm.replay: expected 0/1 values")
        recent = doc.get("recent")
        if not isinstance(recent, list) or not all(x in (0, 1) for x in recent):
            raise StateError("ddm.recent: expected 0/1 values")
        fresh.replay([bool(x) for x in replay])
        fresh.n, fresh.ones = _int(doc.get("n"), "ddm.n"), _int(doc.get("ones"), "ddm.ones")
        fresh.recent = deque(recent, maxlen=fresh.recent.maxlen)
    return fresh


# -- monitors ----------------------------------------------------------------------------
def dump_monitor(mon: StreamMonitor) -> bytes:
    doc = {
        "format": "argus.drift.monitor",
        "version": FORMAT_VERSION,
        "stream": mon.stream,
        "position": mon.position,
        "alarms": mon.alarms,
        "recent_ids": list(mon.recent_ids),
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
