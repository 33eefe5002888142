"""Signed governance records: who may do what to the retraining lifecycle and the model
registry, proven by Ed25519 signatures instead of a free-text ``actor``.

Roles (one key may hold several):

- ``approver``: approves or rejects retraining triggers;
- ``operator``: registers the version serving today, retires versions;
- ``pipeline``: a training pipeline: registers candidates and signs their artifacts;
- ``service``: the retraining service's own transitions (awaiting approval, dispatched,
  validated, canary, promoted, rolled back) and the status changes it makes.

The trust file (YAML, from a Secret or ConfigMap; the local stack keeps it under
``<home>/secrets/governance/trust.yaml``) lists the public keys and their roles::

    keys:
      - name: jane.sre
        public_key: 3q2+7w...    # base64 of the raw 32-byte Ed25519 public key
        roles: [approver]
        revoked_at: null         # an ISO time: signatures made from then on are refused

What a signature covers (``canonical``): the canonical JSON (sorted keys, no spaces,
UTF-8) of ``{"argus": "signed-record/1", "schema": <Avro full name>, "version": <schema
version of the fields signed>, "key_id", "signed_at", "record": <every field of that
schema version but "signature", as plain values: uuids strings, times epoch ms>}``. Avro
binary is not canonical (map order is the writer's), JSON with sorted keys is; the
schema version makes the signed fields stable when a later version adds some.

A record is refused (:class:`Refused`, with the reason a dead letter carries) when its
signature is missing, does not verify, comes from a key not in the trust file, from a
revoked key, from a key without the role the change needs, when its ``actor`` is not the
name the key is trusted under, or when its ``event_id`` was already seen (a replay).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.signing import SignatureError, canonical, key_id, load_key, load_public, public_key_b64

ROLES = ("approver", "operator", "pipeline", "service")
DOMAIN = "signed-record/1"
ARTIFACT_DOMAIN = "model-artifact/1"
POLICY_DOMAIN = "policy-file/1"
POLICY_ROLES = {"operator"}  # who may change alerting rules and retraining policies

# the role a change needs, per topic and state/status
SILENCE_ROLES = {"operator", "approver"}  # who may mute alerts
SERVING_ROLES = {"service", "operator"}  # who may change what the inference service serves
TRIGGER_ROLES = {"approved": {"approver"}, "rejected": {"approver"}}  # every other state: service
REGISTRY_ROLES = {
    "candidate": {"pipeline"},
    "active": {"service", "operator"},  # operator: the version serving when Argus is installed
    "retired": {"operator"},
}  # canary, deprecated, rejected: service


class Refused(ValueError):
    """A governance record that is not trusted; ``kind`` names why (for metrics)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class GovernanceSettings(BaseSettings):
    """Where the trust file and this process's signing key are (``ARGUS_GOVERNANCE_*``);
    unset, the local stack's (``argus stack up`` creates them)."""

    model_config = SettingsConfigDict(env_prefix="ARGUS_GOVERNANCE_", frozen=True, extra="ignore")

    trust_file: Path | None = None
    signing_key_file: Path | None = Field(default=None, description="This process's private key (PEM, mode 0600).")
    keys_dir: Path | None = Field(
        default=None, description="Where `<name>.pem` keys are looked for when no signing_key_file is given."
    )
    allow_unsigned_artifacts: bool = Field(
        default=False,
        description="Accept model versions whose artifact no pipeline key signed (never in production).",
    )


def local_dir(stack: Any = None) -> Path:
    from services.common.settings import StackSettings

    s = stack or StackSettings()
    return Path(s.home).resolve() / "secrets" / "governance"


def trust_path(settings: GovernanceSettings | None = None) -> Path:
    s = settings or GovernanceSettings()
    return s.trust_file or local_dir() / "trust.yaml"


def key_path(name: str, settings: GovernanceSettings | None = None) -> Path:
    s = settings or GovernanceSettings()
    if s.signing_key_file is not None:
        return s.signing_key_file
    if not name or "/" in name or name.startswith("."):
        raise SignatureError(f"{name!r} is not an identity name")
    return (s.keys_dir or local_dir() / "keys") / f"{name}.pem"


# -- trust --------------------------------------------------------------------------
@dataclass(frozen=True)
class TrustedKey:
    name: str
    key_id: str
    public: Ed25519PublicKey
    roles: frozenset[str]
    revoked_at: float | None = None


def _when(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=value.tzinfo or dt.timezone.utc).timestamp()
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class Trust:
    """The trusted keys, re-read when the file changes (a key added or revoked takes
    effect without a restart)."""

    def __init__(self, path: Path | None, doc: Any = None) -> None:
        """From a file (re-read when it changes), or from an already parsed document
        (``path=None``: a replica gets the keys through its Serve config)."""
        self.path = Path(path) if path is not None else None
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, TrustedKey] = {}
        self._lock = threading.Lock()
        if self.path is None:
            self._keys = self.parse(doc, "the trust document")
        else:
            self.reload()

    @staticmethod
    def parse(doc: Any, where: str = "trust file") -> dict[str, TrustedKey]:
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise SignatureError(f"{where}: expected a mapping with a `keys` list")
        out: dict[str, TrustedKey] = {}
        for i, entry in enumerate(doc["keys"]):
            if not isinstance(entry, dict):
                raise SignatureError(f"{where}: keys[{i}] is not a mapping")
            name, roles = entry.get("name"), entry.get("roles") or []
            if not isinstance(name, str) or not name:
                raise SignatureError(f"{where}: keys[{i}] has no name")
            bad = [r for r in roles if r not in ROLES]
            if bad or not isinstance(roles, list):
                raise SignatureError(f"{where}: keys[{i}] ({name}): roles must be among {ROLES}, not {bad or roles}")
            public = load_public(str(entry.get("public_key") or ""))
            try:
                revoked = _when(entry.get("revoked_at"))
            except ValueError:
                raise SignatureError(f"{where}: keys[{i}] ({name}): revoked_at is not an ISO time") from None
            k = TrustedKey(name, key_id(public), public, frozenset(roles), revoked)
            if k.key_id in out:
                raise SignatureError(f"{where}: key {k.key_id} is listed twice")
            out[k.key_id] = k
        return out

    def reload(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise SignatureError(
                f"no trust file at {self.path}: run `argus stack up` (local) or mount the governance trust Secret"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        keys = self.parse(yaml.safe_load(self.path.read_text()), str(self.path))
        with self._lock:
            self._keys, self._stamp = keys, stamp

    def get(self, kid: str) -> TrustedKey | None:
        try:
            self.reload()
        except (OSError, SignatureError):
            pass  # a half-written file: keep the last good list
        with self._lock:
            return self._keys.get(kid)

    def keys(self) -> list[TrustedKey]:
        self.get("")
        with self._lock:
            return list(self._keys.values())


def add_trusted(path: Path, name: str, public: Ed25519PublicKey, roles: Iterable[str]) -> None:
    """Add (or update the roles of) a key in a trust file (mode 0600, written atomically)."""
    roles = sorted(set(roles))
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise SignatureError(f"unknown role(s) {bad}: roles are {ROLES}")
    path = Path(path)
    doc = yaml.safe_load(path.read_text()) if path.exists() else None
    doc = doc or {"keys": []}
    Trust.parse(doc, str(path))
    b64 = public_key_b64(public)
    for entry in doc["keys"]:
        if entry.get("public_key") == b64:
            if entry.get("name") != name:
                raise SignatureError(f"that key is already trusted as {entry.get('name')!r}")
            entry["roles"] = sorted(set(entry.get("roles") or []) | set(roles))
            break
    else:
        doc["keys"].append({"name": name, "public_key": b64, "roles": roles, "key_id": key_id(public)})
    _write_private(path, yaml.safe_dump(doc, sort_keys=False))


def revoke_trusted(path: Path, kid: str, at: float | None = None) -> str:
    path = Path(path)
    doc = yaml.safe_load(path.read_text()) or {"keys": []}
    keys = Trust.parse(doc, str(path))
    if kid not in keys:
        raise SignatureError(f"no trusted key {kid}")
    when = dt.datetime.fromtimestamp(at if at is not None else time.time(), tz=dt.timezone.utc).isoformat()
    for entry in doc["keys"]:
        if key_id(load_public(entry["public_key"])) == kid:
            entry["revoked_at"] = when
    _write_private(path, yaml.safe_dump(doc, sort_keys=False))
    return keys[kid].name


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# -- signing and verifying records ----------------------------------------------------
@lru_cache(maxsize=64)
def _schema(schema_name: str, version: int) -> tuple[str, tuple[str, ...]]:
    """The Avro full name and the signed fields (all but ``signature``) of a version."""
    from services.common.registry import RegistryError, default_registry

    if version < 2:
        raise SignatureError(f"{schema_name}.v{version} records carry no signature")
    try:
        doc = default_registry().schema_json(schema_name, version)
    except RegistryError:
        raise SignatureError(
            f"the signature names {schema_name}.v{version}, which this service does not know"
        ) from None
    return f"{doc['namespace']}.{doc['name']}", tuple(f["name"] for f in doc["fields"] if f["name"] != "signature")


def _fields(schema_name: str, version: int) -> tuple[str, ...]:
    return _schema(schema_name, version)[1]


def _full_name(schema_name: str, version: int) -> str:
    return _schema(schema_name, version)[0]


def _plain(value: Any) -> Any:
    from services.common.codec import to_json

    return to_json(value)


def record_payload(schema_name: str, version: int, rec: dict[str, Any], kid: str, signed_at: int) -> bytes:
    missing = [f for f in _fields(schema_name, version) if f not in rec]
    if missing:
        raise SignatureError(f"the record lacks field(s) {missing} of {schema_name}.v{version}")
    return canonical(
        {
            "argus": DOMAIN,
            "schema": _full_name(schema_name, version),
            "version": version,
            "key_id": kid,
            "signed_at": signed_at,
            "record": {f: _plain(rec[f]) for f in _fields(schema_name, version)},
        }
    )


class Signer:
    """A named identity with its private key: signs records and artifacts."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        self.name, self.key = name, key
        self.key_id = key_id(key.public_key())

    @classmethod
    def load(cls, name: str, path: Path | None = None) -> Signer:
        p = path or key_path(name)
        if not Path(p).exists():
            raise SignatureError(f"no signing key for {name!r} at {p} (create one with `argus identity init`)")
        return cls(name, load_key(p))

    def _signature(self, payload: bytes, signed_at: int, version: int) -> dict[str, Any]:
        return {
            "alg": "Ed25519",
            "key_id": self.key_id,
            "signed_at": signed_at,
            "fields_version": version,
            "value": base64.b64encode(self.key.sign(payload)).decode(),
        }

    def sign_record(
        self, schema_name: str, version: int, rec: dict[str, Any], now: float | None = None
    ) -> dict[str, Any]:
        """``rec`` with ``actor`` set to this identity and its ``signature``."""
        out = dict(rec)
        if "actor" in out:  # a silence names its author in created_by (checked by the gate)
            out["actor"] = self.name
        at = int((now if now is not None else time.time()) * 1000)
        out["signature"] = self._signature(record_payload(schema_name, version, out, self.key_id, at), at, version)
        return out

    def sign_policy(self, kind: str, doc: Any) -> dict[str, Any]:
        """A detached signature of a policy file (alerting rules, retraining policies):
        over the digest of its parsed document, so formatting (a Helm ConfigMap, a
        re-indented copy) does not matter and any change of meaning does."""
        at = int(time.time() * 1000)
        digest = policy_digest(doc)
        sig = self._signature(_policy_payload(kind, digest, self.key_id, at), at, 1)
        return {"argus": POLICY_DOMAIN, "kind": kind, "sha256": digest, "signer": self.name, "signature": sig}

    def sign_artifact(self, model: str, version: str, sha256: str, card: dict[str, str]) -> dict[str, Any]:
        at = int(time.time() * 1000)
        return self._signature(artifact_payload(model, version, sha256, card, self.key_id, at), at, 1)


def policy_digest(doc: Any) -> str:
    """The SHA-256 of a policy document's canonical JSON (what a policy signature covers)."""
    return hashlib.sha256(canonical(doc)).hexdigest()


def _policy_payload(kind: str, digest: str, kid: str, at: int) -> bytes:
    return canonical({"argus": POLICY_DOMAIN, "kind": kind, "sha256": digest, "key_id": kid, "signed_at": at})


def check_policy(trust: Trust, kind: str, doc: Any, signed: Any) -> TrustedKey:
    """The operator key that signed this policy document (``signed``: the detached
    signature file's content); :class:`Refused` when none did, or it signed another."""
    what = f"the {kind} policy"
    if not isinstance(signed, dict) or signed.get("argus") != POLICY_DOMAIN or signed.get("kind") != kind:
        raise Refused("bad_signature", f"{what}: not a {kind} policy signature ({POLICY_DOMAIN})")
    digest = policy_digest(doc)
    if signed.get("sha256") != digest:
        raise Refused(
            "bad_signature", f"{what} changed since it was signed (sha256 {digest}, signed {signed.get('sha256')})"
        )
    return _check(
        trust,
        signed.get("signature"),
        lambda kid, at: _policy_payload(kind, digest, kid, at),
        POLICY_ROLES,
        what,
        signed.get("signer"),
    )


def check_policy_file(kind: str, path: Path, sig: Path, trust_file: Path, allow_unsigned: bool, how: str) -> str:
    """What a service says about the policy file it is about to load: who signed it (an
    operator key), or that an unsigned one is allowed; :class:`Refused` otherwise (the
    service does not start). A signature that is there is always checked."""
    import json

    doc = yaml.safe_load(Path(path).read_text())
    if not sig.exists():
        if allow_unsigned:
            return f"unsigned {kind} (allowed), sha256 {policy_digest(doc)}"
        raise Refused("unsigned", f"{path}: no operator signed this file of {kind} (no {sig}); sign it with {how}")
    try:
        k = check_policy(Trust(trust_file), kind, doc, json.loads(sig.read_text()))
    except Refused:
        raise
    except (ValueError, SignatureError) as exc:
        raise Refused("bad_signature", f"{sig}: {exc}") from None
    return f"{kind} signed by {k.name} (key {k.key_id}), sha256 {policy_digest(doc)}"


def card_digest(card: dict[str, str] | None) -> str:
    return hashlib.sha256(canonical(dict(card or {}))).hexdigest()


def artifact_payload(model: str, version: str, sha256: str, card: dict[str, str] | None, kid: str, at: int) -> bytes:
    return _artifact_payload(model, version, sha256, card_digest(card), kid, at)


def _artifact_payload(model: str, version: str, sha256: str, card_sha256: str, kid: str, at: int) -> bytes:
    return canonical(
        {
            "argus": ARTIFACT_DOMAIN,
            "model": model,
            "version": version,
            "sha256": sha256.lower(),
            "card_sha256": card_sha256,
            "key_id": kid,
            "signed_at": at,
        }
    )


def _check(trust: Trust, sig: Any, payload_of: Any, roles: set[str], what: str, actor: str | None = None) -> TrustedKey:
    if not sig:
        raise Refused("unsigned", f"{what} is not signed (a key with the {'/'.join(sorted(roles))} role must sign it)")
    try:
        kid, at, value = str(sig["key_id"]), _ms(sig["signed_at"]), base64.b64decode(sig["value"], validate=True)
        if sig.get("alg") != "Ed25519":
            raise Refused("bad_signature", f"{what}: unsupported signature algorithm {sig.get('alg')!r}")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused("bad_signature", f"{what}: malformed signature ({type(exc).__name__})") from None
    k = trust.get(kid)
    if k is None:
        raise Refused("untrusted_key", f"{what} is signed by key {kid}, which is not in the trust file")
    if k.revoked_at is not None and at / 1000 >= k.revoked_at:
        raise Refused("revoked_key", f"{what} is signed by {k.name}'s key {kid}, revoked before it signed")
    if not roles & k.roles:
        raise Refused(
            "wrong_role",
            f"{what} needs a key with the {'/'.join(sorted(roles))} role; {k.name}'s key {kid} holds "
            f"{', '.join(sorted(k.roles)) or 'no role'}",
        )
    if actor is not None and actor != k.name:
        raise Refused("wrong_actor", f"{what} names actor {actor!r} but is signed by {k.name}'s key {kid}")
    try:
        payload = payload_of(kid, at)
    except SignatureError as exc:
        raise Refused("bad_signature", f"{what}: {exc}") from None
    try:
        k.public.verify(value, payload)
    except InvalidSignature:
        raise Refused("bad_signature", f"{what}: the signature does not match the record (altered or forged)") from None
    return k


def _ms(v: Any) -> int:
    return int(round(v.timestamp() * 1000)) if hasattr(v, "timestamp") else int(v)


class GovernanceGate:
    """Checks every record of the triggers and registry topics before it is folded in.

    ``check(topic_key, rec)`` returns the trusted key that signed it or raises
    :class:`Refused`. Replays: an ``event_id`` seen before is refused (each record is
    read once per rebuild, in offset order, so the first copy wins)."""

    def __init__(self, trust: Trust, allow_unsigned_artifacts: bool = False, check_replays: bool = True) -> None:
        self.trust = trust
        self.allow_unsigned_artifacts = allow_unsigned_artifacts
        # off for a consumer group (ingest), which may read a batch twice after a rebalance
        self.check_replays = check_replays
        self.seen: set[tuple[str, str]] = set()

    def _verify(self, topic_key: str, rec: dict[str, Any]) -> TrustedKey:
        if topic_key in ("retraining-triggers", "retraining-state"):
            k = self._record(
                "retraining_trigger",
                rec,
                TRIGGER_ROLES.get(rec["state"], {"service"}),
                f"trigger {rec['trigger_id']} #{rec['sequence']} {rec['state']!r}",
            )
        elif topic_key == "model-registry":
            what = f"model version {rec['model']}/{rec['version']} {rec['status']!r}"
            k = self._record("model_version", rec, REGISTRY_ROLES.get(rec["status"], {"service"}), what)
            if not (self.allow_unsigned_artifacts and not rec.get("artifact_signature")):
                check_artifact(self.trust, rec)
        elif topic_key == "alert-silences":
            what = f"silence {rec['silence_id']} {rec['action']!r}"
            k = self._record("silence", rec, SILENCE_ROLES, what, actor=rec["created_by"])
        elif topic_key == "serving-state":
            if rec["status"] != "desired":
                raise ValueError("only desired serving states are signed (the answers are the inference service's)")
            what = f"serving state of {rec['model']} revision {rec['revision']}"
            k = self._record("serving_state", rec, SERVING_ROLES, what)
        else:
            raise ValueError(f"{topic_key} carries no governance records")
        return k

    def check(self, topic_key: str, rec: dict[str, Any]) -> TrustedKey:
        k = self._verify(topic_key, rec)
        # the state topic repeats a trigger's latest record by design (compaction keeps one)
        if not self.check_replays or topic_key == "retraining-state":
            return k
        event = (topic_key, str(rec["event_id"]))
        if event in self.seen:
            raise Refused("replayed", f"event {event[1]} was already applied: a replayed record")
        self.seen.add(event)
        return k

    def _record(
        self, schema_name: str, rec: dict[str, Any], roles: set[str], what: str, actor: str | None = None
    ) -> TrustedKey:
        sig = rec.get("signature")
        version = int(sig.get("fields_version") or 0) if isinstance(sig, dict) else 0
        return _check(
            self.trust,
            sig,
            lambda kid, at: record_payload(schema_name, version, rec, kid, at),
            roles,
            what,
            actor if actor is not None else rec.get("actor"),
        )


def check_artifact(trust: Trust, rec: dict[str, Any]) -> TrustedKey:
    """The pipeline key that signed ``(model, version, sha256, card)`` of a registry
    record; :class:`Refused` when none did."""
    return check_served_artifact(
        trust, rec["model"], rec["version"], rec["sha256"], card_digest(rec.get("card")), rec.get("artifact_signature")
    )


def check_served_artifact(
    trust: Trust, model: str, version: str, sha256: str | None, card_sha256: str | None, signature: Any
) -> TrustedKey:
    """The same check where a version is loaded: the engine has the digest and the card's
    digest (carried by the serving state), not the card."""
    return _check(
        trust,
        signature,
        lambda kid, at: _artifact_payload(model, version, sha256 or "", card_sha256 or "", kid, at),
        {"pipeline"},
        f"the artifact of {model}/{version}",
    )


def ensure_identity(directory: Path, name: str, roles: Iterable[str]) -> str:
    """The key of ``name`` under ``directory/keys`` (created once, 0600) trusted for
    ``roles`` in ``directory/trust.yaml``: what ``argus stack up`` does for the local
    services. Returns the key id."""
    from services.common.signing import create_key

    path = Path(directory) / "keys" / f"{name}.pem"
    public = create_key(path) if not path.exists() else load_key(path).public_key()
    add_trusted(Path(directory) / "trust.yaml", name, public, roles)
    return key_id(public)
