"""Ed25519 signatures over canonical JSON: what Argus signs so that it can be trusted
after the fact (erasure receipts now; approvals and the audit trail build on it).

- Canonical form: JSON with sorted keys, no insignificant whitespace, UTF-8, and no
  floats that could print two ways (callers put times as ISO strings or integers).
- A signed document is ``{"payload": {...}, "signature": {"alg": "Ed25519", "key_id":
  sha256 of the raw public key (hex, first 16), "public_key": base64 raw, "value":
  base64}}``. ``verify`` checks the signature and, when the caller names the keys it
  trusts, that the signer is one of them; a document signed by a key the verifier was
  not told to trust is reported as such, never silently accepted.
- Private keys are PEM (PKCS#8) files of mode 0600, created with ``O_EXCL``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(ValueError):
    pass


def canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def create_key(path: Path) -> Ed25519PublicKey:
    """A new private key at ``path`` (0600; refuses to overwrite one)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key.public_key()


def load_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    # group read is allowed: Kubernetes adds it to a Secret's files for the pod's fsGroup
    if path.stat().st_mode & 0o037:
        raise SignatureError(f"{path} is readable by others (or writable by its group): chmod 600 it")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def public_key_b64(public: Ed25519PublicKey) -> str:
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def load_public(text: str) -> Ed25519PublicKey:
    """A public key as base64 of its 32 raw bytes, or PEM."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("not an Ed25519 public key")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not an Ed25519 public key: {type(exc).__name__}") from None


def sign(payload: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    return {
        "payload": payload,
        "signature": {
            "alg": "Ed25519",
            "key_id": key_id(public),
            "public_key": public_key_b64(public),
            "value": base64.b64encode(key.sign(canonical(payload))).decode(),
        },
    }


def verify(document: dict[str, Any], trusted: list[Ed25519PublicKey] | None = None) -> dict[str, Any]:
    """The payload of a signed document; :class:`SignatureError` when the signature does
    not verify, or the signer is not in ``trusted`` (when given)."""
    try:
        sig = document["signature"]
        payload = document["payload"]
        if sig.get("alg") != "Ed25519":
            raise SignatureError(f"unsupported signature algorithm {sig.get('alg')!r}")
        public = load_public(sig["public_key"])
        value = base64.b64decode(sig["value"], validate=True)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"not a signed document: {type(exc).__name__}") from None
    if trusted is not None and key_id(public) not in {key_id(k) for k in trusted}:
        raise SignatureError(f"signed by key {key_id(public)}, which is not one of the trusted keys")
    try:
        public.verify(value, canonical(payload))
    except InvalidSignature:
        raise SignatureError("the signature does not match the document (altered, or signed by another key)") from None
    return payload
