"""Per-subject data keys, wrapped by a master key, in a store of their own.

A *subject* is whoever the personal data in a row is about: ``(tenant, user)`` when the
event names a user, else ``(tenant, "request:" + request_id)``. Each subject has one
random 256-bit data key. ClickHouse encrypts every text of the subject's rows with it
(AES-256-GCM, in SQL, through a dictionary that asks this service), and decrypts on read.
Destroying the key makes every copy of those texts unreadable at once: merged and
unmerged parts, replicas, backups, a copied data directory. That is erasure by
crypto-shredding; the row mutations that follow only tidy up.

The store is one SQLite file next to the service, never inside ClickHouse's data:

- ``subject_id``: HMAC-SHA256 of ``tenant \\0 subject`` under a key derived from the
  master key. It is the pseudonym ClickHouse stores (the ``user`` and ``subject_id``
  columns); without the master key nobody can map a user id to it or back.
- ``wrapped``: the data key sealed with AES-256-GCM under the key-encryption key (derived
  from the master key), the subject id as associated data, so a wrapped key moved to
  another subject does not open.
- Erasure deletes the row with ``secure_delete`` on (SQLite overwrites the freed bytes)
  and a rollback journal, not a WAL, so no old page keeps the wrapped key; a tombstone
  keeps only the key id and the time, for the receipt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class KeyStoreError(ValueError):
    pass


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"argus/subject-keys/" + purpose).derive(master)


def _check(name: str, value: str) -> bytes:
    # any string is a valid id (an insert must never fail on the data: it would stall the
    # partition); ClickHouse bounds the subject it asks for (services.common.subject_keys)
    if not isinstance(value, str):
        raise KeyStoreError(f"{name} must be a string")
    return value.encode("utf-8", errors="surrogatepass")


@dataclass(frozen=True)
class SubjectKey:
    subject_id: str
    key_id: str
    key: bytes
    created_at: float


@dataclass(frozen=True)
class Destroyed:
    subject_id: str
    key_ids: list[str]
    destroyed_at: float


class KeyStore:
    """Thread-safe; one process owns the file (the key service)."""

    def __init__(self, path: Path, master_key: bytes, cache_size: int = 100_000) -> None:
        if len(master_key) < 16:
            raise KeyStoreError("the master key must hold at least 128 bits")
        self._kek = AESGCM(_derive(master_key, b"kek"))
        self._pepper = _derive(master_key, b"subject-id")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        self._lock = threading.Lock()
        # unwrapped keys of live subjects (the insert path asks for the same few thousand
        # subjects in every block); a destroy removes its entry under the same lock
        self._cache: OrderedDict[str, SubjectKey] = OrderedDict()
        self._cache_size = cache_size
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS subject_keys (subject_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, "
            "key_id TEXT NOT NULL, wrapped BLOB NOT NULL, created_at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS destroyed_keys (key_id TEXT PRIMARY KEY, subject_id TEXT NOT NULL, "
            "tenant TEXT NOT NULL, created_at REAL NOT NULL, destroyed_at REAL NOT NULL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- ids -------------------------------------------------------------------
    def subject_id(self, tenant: str, subject: str) -> str:
        """The pseudonym of a subject: stable, keyed, one-way."""
        t, s = _check("tenant", tenant), _check("subject", subject)
        msg = len(t).to_bytes(8, "big") + t + s  # length-prefixed: no two pairs share an encoding
        return hmac.new(self._pepper, msg, hashlib.sha256).hexdigest()

    # -- keys ------------------------------------------------------------------
    def _unwrap(self, subject_id: str, key_id: str, wrapped: bytes) -> bytes:
        return self._kek.decrypt(wrapped[:12], wrapped[12:], f"{subject_id}|{key_id}".encode())

    def _cached(self, sid: str) -> SubjectKey | None:  # under the lock
        hit = self._cache.get(sid)
        if hit is not None:
            self._cache.move_to_end(sid)
        return hit

    def _remember(self, key: SubjectKey) -> SubjectKey:  # under the lock
        self._cache[key.subject_id] = key
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return key

    def _load(self, sid: str) -> SubjectKey | None:  # under the lock: the cache, else the store
        if (hit := self._cached(sid)) is not None:
            return hit
        row = self._db.execute(
            "SELECT key_id, wrapped, created_at FROM subject_keys WHERE subject_id = ?", (sid,)
        ).fetchone()
        if row is None:
            return None
        return self._remember(SubjectKey(sid, row[0], self._unwrap(sid, row[0], row[1]), row[2]))

    def ensure(self, tenant: str, subject: str) -> SubjectKey:
        """The subject's key, created on first use (the insert path)."""
        sid = self.subject_id(tenant, subject)
        with self._lock:
            if (found := self._load(sid)) is not None:
                return found
            key, key_id, now = AESGCM.generate_key(256), str(uuid.uuid4()), time.time()
            nonce = secrets.token_bytes(12)
            wrapped = nonce + self._kek.encrypt(nonce, key, f"{sid}|{key_id}".encode())
            self._db.execute(
                "INSERT INTO subject_keys (subject_id, tenant, key_id, wrapped, created_at) VALUES (?, ?, ?, ?, ?)",
                (sid, tenant, key_id, wrapped, now),
            )
            return self._remember(SubjectKey(sid, key_id, key, now))

    def lookup(self, subject_id: str) -> SubjectKey | None:
        """The key of a pseudonym (the read path), ``None`` once destroyed or never made."""
        if not isinstance(subject_id, str) or len(subject_id) != 64:
            return None
        with self._lock:
            return self._load(subject_id)

    def destroy(self, tenant: str, subject: str) -> Destroyed:
        """Destroy the subject's key (idempotent: a second call destroys nothing more)."""
        sid = self.subject_id(tenant, subject)
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT key_id, created_at FROM subject_keys WHERE subject_id = ?", (sid,)
                ).fetchall()
                for key_id, created_at in rows:
                    self._db.execute(
                        "INSERT OR IGNORE INTO destroyed_keys VALUES (?, ?, ?, ?, ?)",
                        (key_id, sid, tenant, created_at, now),
                    )
                self._db.execute("DELETE FROM subject_keys WHERE subject_id = ?", (sid,))
                self._db.execute("COMMIT")
                self._cache.pop(sid, None)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Destroyed(sid, [r[0] for r in rows], now)

    def destroyed(self, subject_id: str) -> list[tuple[str, float]]:
        """(key id, destroyed at) of every destroyed key of a pseudonym."""
        with self._lock:
            return [
                (k, t)
                for k, t in self._db.execute(
                    "SELECT key_id, destroyed_at FROM destroyed_keys WHERE subject_id = ? ORDER BY destroyed_at",
                    (subject_id,),
                )
            ]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM subject_keys").fetchone()[0])
