"""Tenants on Kafka: who may publish requests as a tenant and read its answers.

Kafka authorizes per topic (or topic prefix), never per record, and does not tell a
consumer who produced a record, so a ``tenant`` field inside a payload proves nothing.
A tenant therefore gets its own pair of topics, named by the registry's ``tenant_topic``
templates (``argus.tenant.<name>.requests`` and ``argus.tenant.<name>.responses``, same
Avro contracts as the shared topics), and its own principal ``tenant-<name>`` that may
write the first and read the second, nothing else:

    tenant-acme --WRITE--> argus.tenant.acme.requests --(gateway: tenant := "acme")-->
        argus.inference.requests --(bridge)--> argus.inference.responses (platform)
                                          \\--> argus.tenant.acme.responses --READ--> tenant-acme

The inference service's tenant gateway is the only reader of the tenant request topics:
it takes the tenant from the topic name (a payload naming another tenant is
dead-lettered, never answered), forwards the request to the shared topic the rest of the
platform consumes, and the bridge copies each answer to the tenant's reply topic.

Example::

    >>> request_topic("acme")
    'argus.tenant.acme.requests'
    >>> tenant_of("argus.tenant.{tenant}.requests", "argus.tenant.acme.requests")
    'acme'
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from services.common import kafka_acl
from services.common.kafka import ensure_named_topics
from services.common.registry import get_topic
from services.common.tenant_names import NAME

PRINCIPAL_PREFIX = "tenant-"
REPLY_HEADER = "argus.reply_tenant"  # set by the gateway on what it forwards; the bridge replies there


class TenantError(ValueError):
    """A tenant name that cannot name topics, principals and groups safely."""


def check_name(name: str) -> str:
    """A tenant name: 1-40 characters, lowercase letters, digits and inner dashes, starting
    with a letter (no dots or underscores: the name sits inside topic names and prefix ACLs)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise TenantError(
            f"invalid tenant name {name!r}: 1-40 lowercase letters, digits and '-', starting with a letter"
        )
    return name


def principal(tenant: str) -> str:
    return PRINCIPAL_PREFIX + check_name(tenant)


def _template(key: str) -> str:
    template = get_topic(key).tenant_topic
    if template is None:
        raise TenantError(f"topic {key} has no per-tenant copies (no tenant_topic in the registry)")
    return template


def tenant_topic(key: str, tenant: str, topic_prefix: str = "") -> str:
    """The Kafka name of ``tenant``'s copy of registry topic ``key``."""
    return topic_prefix + _template(key).replace("{tenant}", check_name(tenant))


def request_topic(tenant: str, topic_prefix: str = "") -> str:
    return tenant_topic("inference-requests", tenant, topic_prefix)


def response_topic(tenant: str, topic_prefix: str = "") -> str:
    return tenant_topic("inference-responses", tenant, topic_prefix)


def group_prefix(tenant: str, topic_prefix: str = "") -> str:
    """Consumer groups a tenant may use (``<prefix>argus.tenant.<name>.``)."""
    return topic_prefix + _template("inference-responses").split("{tenant}")[0] + check_name(tenant) + "."


def common_prefix(topic_prefix: str = "") -> str:
    """What every tenant topic name starts with (``argus.tenant.``): the gateway's prefix ACLs."""
    return topic_prefix + _template("inference-requests").split("{tenant}")[0]


def request_pattern(topic_prefix: str = "") -> str:
    """A regex matching every tenant's request topic (the gateway subscribes by pattern)."""
    head, _, tail = _template("inference-requests").partition("{tenant}")
    return "^" + re.escape(topic_prefix + head) + r"[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?" + re.escape(tail) + "$"


def acls(tenant: str, topic_prefix: str = "") -> list[kafka_acl.Acl]:
    """Everything a tenant's principal may do: write its requests, read its answers (with
    consumer groups under its own prefix), idempotent produce. Nothing on any other topic."""
    Acl = kafka_acl.Acl  # noqa: N806
    who, req, resp = principal(tenant), request_topic(tenant, topic_prefix), response_topic(tenant, topic_prefix)
    return sorted(
        {
            Acl(who, "topic", req, "literal", "Write"),
            Acl(who, "topic", req, "literal", "Describe"),
            Acl(who, "topic", resp, "literal", "Read"),
            Acl(who, "topic", resp, "literal", "Describe"),
            Acl(who, "group", group_prefix(tenant, topic_prefix), "prefixed", "Read"),
            Acl(who, "group", group_prefix(tenant, topic_prefix), "prefixed", "Describe"),
            Acl(who, "cluster", "kafka-cluster", "literal", "IdempotentWrite"),
        }
    )


def client_config(tenant: str, bootstrap: str, password: str, ca_file: str, topic_prefix: str = "") -> dict[str, Any]:
    """What a tenant's producer needs, in three dialects (``python`` env for the SDK,
    ``java`` properties for ``kafka-clients``, ``librdkafka`` properties)."""
    user = principal(tenant)
    req, resp, group = (
        request_topic(tenant, topic_prefix),
        response_topic(tenant, topic_prefix),
        group_prefix(tenant, topic_prefix),
    )
    jaas = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";'
    return {
        "tenant": tenant,
        "principal": user,
        "request_topic": req,
        "response_topic": resp,
        "group_prefix": group,
        "python": {
            "ARGUS_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "ARGUS_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "ARGUS_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "ARGUS_KAFKA__SASL_USERNAME": user,
            "ARGUS_KAFKA__SASL_PASSWORD": password,
            "ARGUS_KAFKA__SSL_CAFILE": ca_file,
            "ARGUS_KAFKA__TOPIC_PREFIX": topic_prefix,
            "ARGUS_TENANT": tenant,
        },
        "java": {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.jaas.config": jaas,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": ca_file,
            "enable.idempotence": "true",
            "acks": "all",
        },
        "librdkafka": {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": ca_file,
            "enable.idempotence": "true",
            "acks": "all",
        },
    }


def render(config: dict[str, Any], dialect: str) -> str:
    """One dialect of :func:`client_config` as text (env lines or ``key=value`` properties)."""
    head = (
        f"# tenant {config['tenant']}: publish to {config['request_topic']}, read {config['response_topic']}, "
        f"consumer groups {config['group_prefix']}*\n"
    )
    if dialect == "python":
        return head + "".join(f"{k}={v}\n" for k, v in config["python"].items())
    if dialect in ("java", "librdkafka"):
        return head + "".join(f"{k}={_prop(v)}\n" for k, v in config[dialect].items())
    raise TenantError(f"unknown dialect {dialect!r}: python, java or librdkafka")


def _prop(value: str) -> str:
    # java.util.Properties escapes: backslash first, then what would start a comment or end a key
    return value.replace("\\", "\\\\").replace("\n", "\\n")


# -- provisioning (with a principal allowed to manage users, ACLs and topics) -----------
async def provision(admin: Any, tenant: str, password: str) -> list[str]:
    """Create or update ``tenant``: its SCRAM-SHA-512 credential, its two topics (the
    registry's partitions and config) and its ACLs. Idempotent; returns the topics created."""
    prefix = admin.topic_prefix
    wanted = {
        tenant_topic(key, tenant, prefix): (get_topic(key).partitions, dict(get_topic(key).config))
        for key in ("inference-requests", "inference-responses")
    }
    await asyncio.to_thread(kafka_acl.upsert_users, admin, {principal(tenant): password})
    created = await ensure_named_topics(admin, wanted)
    await asyncio.to_thread(kafka_acl.apply, admin, acls(tenant, prefix))
    return created


async def revoke(admin: Any, tenant: str, delete_topics: bool = False) -> tuple[int, bool]:
    """Take a tenant's access away: its ACLs and its credential (and with ``delete_topics``
    its topics). Returns (ACLs deleted, whether a credential existed)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka import client_kwargs

    prefix = admin.topic_prefix
    gone = await asyncio.to_thread(kafka_acl.delete, admin, acls(tenant, prefix))
    users = await asyncio.to_thread(kafka_acl.delete_users, admin, [principal(tenant)])
    if delete_topics:
        client = AIOKafkaAdminClient(**client_kwargs(admin), request_timeout_ms=30000)
        await client.start()
        try:
            existing = set(await client.list_topics())
            names = [t for t in (request_topic(tenant, prefix), response_topic(tenant, prefix)) if t in existing]
            if names:
                await client.delete_topics(names)
        finally:
            await client.close()
    return gone, bool(users)
