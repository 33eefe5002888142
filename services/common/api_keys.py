"""API keys for the HTTP routes: each key belongs to one tenant, is stored only as its
SHA-256 digest, can be revoked, and is rate-limited.

A key reads ``argus_<id>_<secret>``: ``id`` (12 hex) finds the record without scanning,
``secret`` is 256 random bits, so a plain SHA-256 digest (compared in constant time) is
as strong as a slow hash would be for it. The store is one JSON file (0600) that
``argus keys create|revoke|list`` edits atomically and the router re-reads when it
changes (on a cluster: a Secret mounted as a file).

Example::

    >>> store = KeyStore(tmp / "api-keys.json")           # doctest: +SKIP
    >>> key_id, token = store.create("acme", name="ci")   # the token is shown once
    >>> store.verify(token).tenant                        # doctest: +SKIP
    'acme'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.files import write_private
from services.common.tenant_names import NAME as TENANT_NAME

_TOKEN = re.compile(r"^argus_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MAX_TOKEN_CHARS = 128  # anything longer is not a key: refused before any work


class ApiKeyError(ValueError):
    """A key operation that cannot be done (unknown id, bad tenant name...)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    sha256: str
    created_at: float
    name: str = ""
    rate_per_minute: int | None = None  # None: the route's default
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int] | None = None

    # -- reading -------------------------------------------------------------
    def _load(self) -> dict[str, ApiKey]:
        """The keys as the file holds them now (re-read only when it changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return self._keys
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            doc = json.loads(self.path.read_text() or "{}")
            self._keys = {k: ApiKey(key_id=k, **v) for k, v in (doc.get("keys") or {}).items()}
            self._stamp = stamp
        return self._keys

    def keys(self) -> list[ApiKey]:
        with self._lock:
            return sorted(self._load().values(), key=lambda k: k.created_at)

    def verify(self, token: str | None) -> ApiKey | None:
        """The active key ``token`` is, else None (unknown, revoked, malformed)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        m = _TOKEN.match(token)
        if m is None:
            return None
        with self._lock:
            key = self._load().get(m.group(1))
        if key is None or not hmac.compare_digest(key.sha256, _digest(m.group(2))):
            return None
        return key if key.active else None

    # -- writing (the CLI) -----------------------------------------------------
    def _save(self, keys: dict[str, ApiKey]) -> None:
        doc = {
            "version": 1,
            "keys": {k: {f: v for f, v in asdict(a).items() if f != "key_id"} for k, a in keys.items()},
        }
        write_private(self.path, json.dumps(doc, indent=1, sort_keys=True))  # the router sees old or new, never half

    def create(self, tenant: str, name: str = "", rate_per_minute: int | None = None) -> tuple[str, str]:
        """A new key for ``tenant``: returns (key id, the token). Only the digest is kept."""
        if not TENANT_NAME.fullmatch(tenant or ""):
            raise ApiKeyError(f"invalid tenant name {tenant!r}")
        if rate_per_minute is not None and rate_per_minute < 1:
            raise ApiKeyError("rate_per_minute must be at least 1")
        with self._lock:
            keys = dict(self._load())
            key_id = secrets.token_hex(6)
            while key_id in keys:
                key_id = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            keys[key_id] = ApiKey(key_id, tenant, _digest(secret), time.time(), name[:200], rate_per_minute)
            self._save(keys)
            self._stamp = None
        return key_id, f"argus_{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        with self._lock:
            keys = dict(self._load())
            if key_id not in keys:
                raise ApiKeyError(f"no key {key_id!r}")
            if keys[key_id].active:
                k = keys[key_id]
                keys[key_id] = ApiKey(
                    k.key_id, k.tenant, k.sha256, k.created_at, k.name, k.rate_per_minute, time.time()
                )
                self._save(keys)
                self._stamp = None
            return keys[key_id]


class RateLimiter:
    """One token bucket per key: ``rate`` requests per minute, bursts up to ``rate``."""

    def __init__(self, clock=time.monotonic) -> None:  # noqa: ANN001
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key_id: str, rate_per_minute: int) -> float | None:
        """None when the request may go now; else the seconds until it may (Retry-After)."""
        now = self.clock()
        per_s = rate_per_minute / 60.0
        with self._lock:
            tokens, at = self._buckets.get(key_id, (float(rate_per_minute), now))
            tokens = min(float(rate_per_minute), tokens + (now - at) * per_s)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return None
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / per_s

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))
