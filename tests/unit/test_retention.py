"""Retention policies: parsed strictly, rendered as TTL expressions."""

from __future__ import annotations

import pytest

from services.common.retention import Policy, RetentionError

DOC = {
    "families": {
        "inference": {"days": 90, "tables": {"inference_requests": "created_at", "inference_responses": "served_at"}},
        "audit": {"days": 730, "tables": {"retraining_triggers": "occurred_at"}},
    },
    "tenants": {"clinic": {"inference": 7}, "bank": {"inference": 400}},
}


def test_ttls_per_family_with_tenant_overrides() -> None:
    p = Policy.parse(DOC)
    assert p.ttl("inference_responses") == (
        "toDateTime(served_at) + toIntervalDay(multiIf(tenant = 'bank', 400, tenant = 'clinic', 7, 90))"
    )
    assert p.ttl("retraining_triggers") == "toDateTime(occurred_at) + toIntervalDay(730)"
    with pytest.raises(KeyError):
        p.ttl("nothing")


def test_the_shipped_policy_covers_every_table_that_had_a_ttl() -> None:
    p = Policy.load()
    assert set(p.tables()) >= {"inference_requests", "inference_responses", "feedback", "dead_letters", "alerts"}
    assert p.ttl("inference_requests") == "toDateTime(created_at) + toIntervalDay(90)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tenants": {"Bad Name'": {"inference": 7}}}, "not a tenant name"),
        ({"tenants": {"clinic": {"audit": 7}}}, "holds no tenant's rows"),
        ({"tenants": {"clinic": {"nope": 7}}}, "unknown family"),
        ({"tenants": {"clinic": {"inference": 0}}}, "days must be"),
        ({"tenants": {"clinic": {"inference": "7; DROP"}}}, "days must be"),
        ({"families": {"x": {"days": 1, "tables": {"t; DROP": "c"}}}}, "not a table"),
        (
            {"families": {"x": {"days": 1, "tables": {"a": "c"}}, "y": {"days": 2, "tables": {"a": "c"}}}},
            "two families",
        ),
    ],
)
def test_a_policy_that_could_inject_or_means_nothing_is_refused(change: dict, message: str) -> None:
    with pytest.raises(RetentionError, match=message):
        Policy.parse({**DOC, **change})


def test_texts_have_their_own_days_per_tenant() -> None:
    p = Policy.parse({**DOC, "texts": {"days": 30}, "tenants": {"clinic": {"texts": 7, "inference": 30}}})
    assert p.texts_days_expr() == "multiIf(tenant = 'clinic', 7, 30)"
    assert Policy.parse(DOC).texts_days_expr() is None and Policy.load().texts_days == 30
    with pytest.raises(RetentionError, match="needs a default"):
        Policy.parse({**DOC, "tenants": {"clinic": {"texts": 7}}})


def test_a_database_name_that_is_not_an_identifier_is_refused_before_any_sql() -> None:
    from services.common.erasure import export, verify
    from services.common.retention import apply, expire_texts

    class NoClient:  # any statement would be an error: the name is refused first
        def __getattr__(self, name: str):  # noqa: ANN204
            raise AssertionError(f"SQL was built with a bad database name ({name})")

    bad = "argus; DROP TABLE x"
    for call in (
        lambda: apply(NoClient(), bad, Policy.parse(DOC)),
        lambda: expire_texts(NoClient(), bad, Policy.parse(DOC)),
        lambda: verify(NoClient(), bad, None, {}),
        lambda: list(export(NoClient(), bad, None, "t", "s")),
    ):
        with pytest.raises(ValueError, match="invalid database name"):
            call()
