"""API keys: stored as digests, verified in constant time, revocable; the rate limiter."""

from __future__ import annotations

import json
import stat

import pytest

from services.common.api_keys import ApiKeyError, KeyStore, RateLimiter


def test_a_key_is_shown_once_and_stored_only_as_a_digest(tmp_path) -> None:  # noqa: ANN001
    store = KeyStore(tmp_path / "keys.json")
    key_id, token = store.create("acme", name="ci", rate_per_minute=30)
    text = store.path.read_text()
    assert token not in text and token.split("_", 2)[2] not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    doc = json.loads(text)
    assert doc["keys"][key_id]["tenant"] == "acme" and len(doc["keys"][key_id]["sha256"]) == 64
    key = KeyStore(store.path).verify(token)  # another process (the router) reads the same file
    assert key is not None and key.tenant == "acme" and key.rate_per_minute == 30


def test_wrong_malformed_oversized_and_revoked_keys_are_refused(tmp_path) -> None:  # noqa: ANN001
    store = KeyStore(tmp_path / "keys.json")
    key_id, token = store.create("acme")
    other_id, other = store.create("bravo")
    reader = KeyStore(store.path)
    prefix, kid, secret = token.split("_", 2)
    forged = f"{prefix}_{kid}_{other.split('_', 2)[2]}"  # a real secret under another id
    for bad in (None, "", "nope", token + "x", token[:-1], forged, "argus_" + "0" * 12 + "_" + secret, "x" * 10_000):
        assert reader.verify(bad) is None, bad
    assert reader.verify(token).key_id == key_id
    store.revoke(key_id)
    assert reader.verify(token) is None and reader.verify(other).key_id == other_id  # re-read on change
    assert [k.key_id for k in store.keys() if not k.active] == [key_id]
    with pytest.raises(ApiKeyError):
        store.revoke("000000000000")


def test_keys_belong_to_valid_tenants(tmp_path) -> None:  # noqa: ANN001
    store = KeyStore(tmp_path / "keys.json")
    for bad in ("", "Acme", "a.b", "x" * 41):
        with pytest.raises(ApiKeyError):
            store.create(bad)
    with pytest.raises(ApiKeyError):
        store.create("acme", rate_per_minute=0)


def test_the_rate_limiter_allows_the_rate_and_says_when_to_retry() -> None:
    now = [1000.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("k", 3) for _ in range(3)] == [None, None, None]  # a burst up to the rate
    wait = limiter.take("k", 3)
    assert wait == pytest.approx(20.0)  # 3/min: one token every 20 s
    assert RateLimiter.retry_after_header(wait) == "20"
    assert limiter.take("other", 3) is None  # per key
    now[0] += 20.0
    assert limiter.take("k", 3) is None and limiter.take("k", 3) is not None
    now[0] += 3600
    assert [limiter.take("k", 3) for _ in range(4)].count(None) == 3  # refills to the burst, no more
