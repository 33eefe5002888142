"""Tenant naming, topics, ACLs and client configuration (no broker: the pure parts)."""

from __future__ import annotations

import re

import pytest

from services.common import kafka_acl, tenants
from services.common.dlq import Message
from services.common.registry import RegistryError, default_registry
from services.inference.bridge import _reply_tenant


@pytest.mark.parametrize("name", ["a", "acme", "acme-2", "x" * 40, "b2b"])
def test_valid_names(name: str) -> None:
    assert tenants.check_name(name) == name


@pytest.mark.parametrize("name", ["", "Acme", "2acme", "acme-", "a.b", "a_b", "x" * 41, "acme\n", "*", "ac me"])
def test_names_that_could_escape_their_topics_or_prefixes_are_refused(name: str) -> None:
    with pytest.raises(tenants.TenantError):
        tenants.check_name(name)


def test_topics_come_from_the_registry_templates_and_map_back() -> None:
    reg = default_registry()
    assert tenants.request_topic("acme", "p.") == "p.argus.tenant.acme.requests"
    assert tenants.response_topic("acme") == "argus.tenant.acme.responses"
    assert reg.key_of("argus.tenant.acme.requests") == ("inference-requests", "acme")
    assert reg.key_of("argus.tenant.acme.responses") == ("inference-responses", "acme")
    assert reg.key_of("argus.inference.requests") == ("inference-requests", None)
    for bad in ("argus.tenant..requests", "argus.tenant.A.requests", "argus.tenant.a.b.requests", "nope"):
        with pytest.raises(RegistryError):
            reg.key_of(bad)


def test_the_gateway_pattern_matches_request_topics_only() -> None:
    pattern = re.compile(tenants.request_pattern("p."))
    assert pattern.match("p.argus.tenant.acme.requests")
    assert pattern.match("p.argus.tenant.a.requests")
    for other in (
        "p.argus.tenant.acme.responses",
        "argus.tenant.acme.requests",
        "p.argus.tenant.acme.x.requests",
        "p.argus.inference.requests",
        "p.argus.tenant.acme.requests.dlq",
        "pXargus.tenant.acme.requests",
    ):
        assert not pattern.match(other), other


def test_a_tenant_may_write_its_requests_and_read_its_answers_and_nothing_else() -> None:
    acls = tenants.acls("acme", "p.")
    who = "tenant-acme"
    assert kafka_acl.allowed(acls, who, "p.argus.tenant.acme.requests", "Write")
    assert kafka_acl.allowed(acls, who, "p.argus.tenant.acme.responses", "Read")
    for topic, op in [
        ("p.argus.tenant.acme.requests", "Read"),
        ("p.argus.tenant.acme.responses", "Write"),
        ("p.argus.tenant.acme-2.requests", "Write"),
        ("p.argus.tenant.bravo.responses", "Read"),
        ("p.argus.inference.requests", "Write"),
        ("p.argus.inference.responses", "Read"),
    ]:
        assert not kafka_acl.allowed(acls, who, topic, op), (topic, op)
    groups = [a for a in acls if a.resource == "group"]
    assert {a.name for a in groups} == {"p.argus.tenant.acme."}  # the dot: acme- cannot take acme-2's


def test_the_platform_plan_lets_only_the_inference_principal_reach_tenant_topics() -> None:
    plan = kafka_acl.plan("p.")
    reach = {a.principal for a in plan if a.resource == "topic" and a.name.startswith("p.argus.tenant.")}
    assert reach == {"argus-inference"}


def test_client_configuration_in_three_dialects() -> None:
    config = tenants.client_config("acme", "broker:9093", "s3cret", "/etc/argus/ca.pem", "p.")
    java = tenants.render(config, "java")
    assert "sasl.mechanism=SCRAM-SHA-512" in java and "security.protocol=SASL_SSL" in java
    assert 'username="tenant-acme" password="s3cret"' in java and "ssl.truststore.type=PEM" in java
    rd = tenants.render(config, "librdkafka")
    assert "sasl.username=tenant-acme" in rd and "ssl.ca.location=/etc/argus/ca.pem" in rd
    py = tenants.render(config, "python")
    assert "ARGUS_TENANT=acme" in py and "ARGUS_KAFKA__TOPIC_PREFIX=p." in py
    with pytest.raises(tenants.TenantError):
        tenants.render(config, "yaml")


def _msg(tenant: str, headers: tuple) -> Message:
    return Message("argus.inference.requests", 0, 0, b"k", b"", 0, headers, value={"tenant": tenant})


def test_the_bridge_replies_to_a_tenant_only_when_the_header_names_the_requests_own_tenant() -> None:
    assert _reply_tenant(_msg("acme", ((tenants.REPLY_HEADER, b"acme"),))) == "acme"
    assert _reply_tenant(_msg("bravo", ((tenants.REPLY_HEADER, b"acme"),))) is None
    assert _reply_tenant(_msg("acme", ())) is None
    assert _reply_tenant(_msg("a.b", ((tenants.REPLY_HEADER, b"a.b"),))) is None
    assert _reply_tenant(_msg("acme", ((tenants.REPLY_HEADER, b"\xff"),))) is None
