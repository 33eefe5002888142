"""Kafka ACLs derived from the topic registry and ``schemas/principals.yaml``.

Nothing is granted by hand: each principal holds registry roles, and the registry says
which roles produce and consume which topic (see the comment at the top of
``schemas/principals.yaml`` for the rules). :func:`plan` is pure (tested without a
broker); ``argus acl plan|apply`` prints and applies it, ``argus stack up`` applies it
locally, and the Helm chart renders the same bindings as Strimzi ``KafkaUser`` resources.
With ``allow.everyone.if.no.acl.found=false`` whatever is not planned is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from services.common.contracts import contract_path
from services.common.registry import SchemaRegistry, default_registry

ADMIN_PRINCIPAL = "argus-admin"


@dataclass(frozen=True, order=True)
class Acl:
    principal: str  # the SCRAM user name (Kafka principal User:<name>)
    resource: str  # topic | group | cluster
    name: str
    pattern: str  # literal | prefixed
    operation: str  # Read | Write | Describe | IdempotentWrite | All

    def __str__(self) -> str:
        pat = "" if self.pattern == "literal" else f" ({self.pattern})"
        return f"User:{self.principal} {self.operation} {self.resource}:{self.name}{pat}"


@dataclass(frozen=True)
class Principal:
    name: str
    description: str = ""
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    internal: tuple[str, ...] = ()
    replay: bool = False
    reads_all: bool = False
    tenant_topics: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def load_principals() -> dict[str, Principal]:
    doc = yaml.safe_load(contract_path("schemas", "principals.yaml").read_text())
    out = {}
    for name, spec in (doc.get("principals") or {}).items():
        out[name] = Principal(
            name=name,
            description=spec.get("description", ""),
            roles=tuple(spec.get("roles") or ()),
            groups=tuple(spec.get("groups") or ()),
            internal=tuple(spec.get("internal") or ()),
            replay=bool(spec.get("replay")),
            reads_all=bool(spec.get("reads_all")),
            tenant_topics=tuple(spec.get("tenant_topics") or ()),
        )
    return out


def plan(
    topic_prefix: str = "",
    registry: SchemaRegistry | None = None,
    principals: dict[str, Principal] | None = None,
) -> list[Acl]:
    """Every ACL the platform needs, for topics named ``topic_prefix + registry name``."""
    reg = registry or default_registry()
    people = principals or load_principals()
    by_role: dict[str, set[str]] = {}
    for p in people.values():
        for role in p.roles:
            by_role.setdefault(role, set()).add(p.name)
    acls: set[Acl] = set()
    for topic in reg.topics.values():
        name = topic_prefix + topic.name
        for role in topic.producers:
            for who in by_role.get(role, ()):
                acls.add(Acl(who, "topic", name, "literal", "Write"))
                acls.add(Acl(who, "topic", name, "literal", "Describe"))
                acls.add(Acl(who, "cluster", "kafka-cluster", "literal", "IdempotentWrite"))
        for role in topic.consumers:
            for who in by_role.get(role, ()):
                acls.add(Acl(who, "topic", name, "literal", "Read"))
                acls.add(Acl(who, "topic", name, "literal", "Describe"))
                if topic.dead_letter_topic:  # it dead-letters what it cannot read
                    dlq = topic_prefix + reg.topic(topic.dead_letter_topic).name
                    acls.add(Acl(who, "topic", dlq, "literal", "Write"))
                    acls.add(Acl(who, "topic", dlq, "literal", "Describe"))
                    acls.add(Acl(who, "cluster", "kafka-cluster", "literal", "IdempotentWrite"))
        for p in people.values():
            if p.reads_all:
                acls.add(Acl(p.name, "topic", name, "literal", "Read"))
                acls.add(Acl(p.name, "topic", name, "literal", "Describe"))
            if p.replay and topic.dead_letter_topic:
                acls.add(Acl(p.name, "topic", name, "literal", "Write"))
                acls.add(Acl(p.name, "cluster", "kafka-cluster", "literal", "IdempotentWrite"))
    for p in people.values():
        for g in p.groups:
            acls.add(Acl(p.name, "group", g, "prefixed", "Read"))
            acls.add(Acl(p.name, "group", g, "prefixed", "Describe"))
        # every tenant's topics: the common head of the registry's tenant_topic templates
        heads = {t.tenant_topic.split("{tenant}")[0] for t in reg.topics.values() if t.tenant_topic}
        for head in sorted(heads) if p.tenant_topics else ():
            for op in p.tenant_topics:
                acls.add(Acl(p.name, "topic", topic_prefix + head, "prefixed", op))
            if "Write" in p.tenant_topics:
                acls.add(Acl(p.name, "cluster", "kafka-cluster", "literal", "IdempotentWrite"))
        for prefix in p.internal:
            acls.add(Acl(p.name, "topic", topic_prefix + prefix, "prefixed", "All"))
            acls.add(Acl(p.name, "cluster", "kafka-cluster", "literal", "IdempotentWrite"))
    return sorted(acls)


def strimzi_acls(acls: list[Acl]) -> dict[str, list[dict[str, Any]]]:
    """The plan as Strimzi ``KafkaUser`` ``spec.authorization.acls`` per principal (topic
    names without the topic prefix: the chart prepends ``kafka.topicPrefix``)."""
    grouped: dict[str, dict[tuple[str, str, str], list[str]]] = {}
    for a in acls:
        grouped.setdefault(a.principal, {}).setdefault((a.resource, a.name, a.pattern), []).append(a.operation)
    out: dict[str, list[dict[str, Any]]] = {}
    for principal, resources in sorted(grouped.items()):
        rules = []
        for (rtype, name, pattern), ops in sorted(resources.items()):
            resource: dict[str, Any] = {"type": rtype}
            if rtype != "cluster":
                resource |= {"name": name, "patternType": "prefix" if pattern == "prefixed" else "literal"}
            rules.append({"resource": resource, "operations": sorted(set(ops))})
        out[principal] = rules
    return out


def allowed(acls: list[Acl], principal: str, topic: str, operation: str) -> bool:
    """Whether ``acls`` let ``principal`` do ``operation`` (Read | Write) on ``topic``."""
    for a in acls:
        if a.principal != principal or a.resource != "topic" or a.operation not in (operation, "All"):
            continue
        if (a.pattern == "literal" and a.name == topic) or (a.pattern == "prefixed" and topic.startswith(a.name)):
            return True
    return False


# -- applying (confluent-kafka's admin client: aiokafka has no ACL or SCRAM API) ---------
_OPS = {"Read": "READ", "Write": "WRITE", "Describe": "DESCRIBE", "IdempotentWrite": "IDEMPOTENT_WRITE", "All": "ALL"}


def admin_config(k: Any) -> dict[str, str]:
    """librdkafka settings for the same connection as :class:`KafkaSettings` ``k``."""
    conf = {"bootstrap.servers": k.bootstrap_servers, "security.protocol": k.security_protocol}
    if k.security_protocol.startswith("SASL"):
        conf |= {"sasl.mechanism": k.sasl_mechanism, "sasl.username": k.sasl_username, "sasl.password": k.password()}
    if k.security_protocol in ("SSL", "SASL_SSL") and k.ssl_cafile:
        conf["ssl.ca.location"] = str(k.ssl_cafile)
    return conf


def _binding(a: Acl):  # noqa: ANN202 - confluent_kafka.admin.AclBinding
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    rtype = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER}[a.resource]
    pattern = ResourcePatternType.PREFIXED if a.pattern == "prefixed" else ResourcePatternType.LITERAL
    return AclBinding(
        rtype, a.name, pattern, f"User:{a.principal}", "*", AclOperation[_OPS[a.operation]], AclPermissionType.ALLOW
    )


def upsert_users(k: Any, passwords: dict[str, str], timeout_s: float = 30.0) -> None:
    """Create or update the SCRAM-SHA-512 credentials of ``passwords`` (user -> password)."""
    from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    if not passwords:
        return
    admin = AdminClient(admin_config(k))
    ups = [
        UserScramCredentialUpsertion(u, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), pw.encode())
        for u, pw in passwords.items()
    ]
    for _, fut in admin.alter_user_scram_credentials(ups, request_timeout=timeout_s).items():
        fut.result()


def apply(k: Any, acls: list[Acl], timeout_s: float = 30.0) -> int:
    """Create the bindings of ``acls`` (idempotent: Kafka keeps one of each). Returns how many."""
    from confluent_kafka.admin import AdminClient

    if not acls:
        return 0
    admin = AdminClient(admin_config(k))
    for _, fut in admin.create_acls([_binding(a) for a in acls], request_timeout=timeout_s).items():
        fut.result()
    return len(acls)


def delete(k: Any, acls: list[Acl], timeout_s: float = 30.0) -> int:
    """Delete exactly the bindings of ``acls`` (those that exist). Returns how many went."""
    from confluent_kafka.admin import AclBindingFilter, AdminClient

    if not acls:
        return 0
    admin = AdminClient(admin_config(k))
    filters = []
    for a in acls:
        b = _binding(a)
        filters.append(
            AclBindingFilter(
                b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type
            )
        )
    gone = 0
    for _, fut in admin.delete_acls(filters, request_timeout=timeout_s).items():
        gone += len(fut.result())
    return gone


def delete_users(k: Any, users: list[str], timeout_s: float = 30.0) -> list[str]:
    """Delete the SCRAM-SHA-512 credentials of ``users``; returns those that existed."""
    from confluent_kafka.admin import AdminClient, ScramMechanism, UserScramCredentialDeletion
    from confluent_kafka.error import KafkaException

    if not users:
        return []
    admin = AdminClient(admin_config(k))
    dels = [UserScramCredentialDeletion(u, ScramMechanism.SCRAM_SHA_512) for u in users]
    gone = []
    for user, fut in admin.alter_user_scram_credentials(dels, request_timeout=timeout_s).items():
        try:
            fut.result()
            gone.append(user)
        except KafkaException as exc:  # RESOURCE_NOT_FOUND: there was no such credential
            if "RESOURCE_NOT_FOUND" not in str(exc) and "not found" not in str(exc).lower():
                raise
    return gone
