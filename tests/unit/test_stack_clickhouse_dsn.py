"""The local stack's ClickHouse DSNs: each user's own password; HTTPS with the CA when asked."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from services.common.settings import StackSettings
from services.stack.credentials import clickhouse_password


def test_dsns_carry_the_users_password_and_the_ca_when_https(tmp_path) -> None:  # noqa: ANN001
    pw = clickhouse_password(tmp_path, "argus_sre").get_secret_value()
    plain = urlsplit(StackSettings(home=tmp_path).clickhouse_dsn("argus_sre").get_secret_value())
    assert plain.scheme == "http" and plain.username == "argus_sre" and plain.password == pw
    tls = urlsplit(StackSettings(home=tmp_path, clickhouse_https=True).clickhouse_dsn("argus_sre").get_secret_value())
    assert tls.scheme == "https" and parse_qs(tls.query)["ca_cert"] == [str(tmp_path.resolve() / "tls" / "ca.pem")]
    with pytest.raises(ValueError, match="argus stack up"):
        StackSettings(home=tmp_path).clickhouse_dsn("argus_ingest")


def test_kafka_cluster_ids_never_look_like_an_option() -> None:
    from services.stack.kafka_local import new_cluster_id

    ids = [new_cluster_id() for _ in range(2000)]  # ~31 would start with '-' without the check
    assert not [i for i in ids if i.startswith("-")] and all(len(i) == 22 for i in ids)


def test_a_stack_of_three_brokers_is_a_static_kraft_quorum_and_keeps_its_count(tmp_path) -> None:  # noqa: ANN001
    from services.stack.kafka_local import KafkaCluster
    from services.stack.manager import Stack, StackError

    stack = Stack(StackSettings(home=tmp_path, kafka_brokers=3, kafka_port=19092, kafka_controller_port=19093))
    assert isinstance(stack.kafka, KafkaCluster)
    assert stack.kafka.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert stack.kafka_settings.replication == "registry"  # three copies, min.insync.replicas 2
    configs = [node.write_config() for node in stack.kafka.nodes]
    props = dict(line.split("=", 1) for line in configs[2].read_text().splitlines() if "=" in line)
    assert props["node.id"] == "3" and "controller.quorum.bootstrap.servers" not in props
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert props["offsets.topic.replication.factor"] == "3" and props["transaction.state.log.min.isr"] == "2"
    (stack.kafka.nodes[0].data).mkdir(parents=True)
    (stack.kafka.nodes[0].data / "meta.properties").write_text("cluster.id=abc\n")
    assert isinstance(Stack(StackSettings(home=tmp_path)).kafka, KafkaCluster)  # the data decides
    with pytest.raises(StackError, match="made with 3 broker"):
        Stack(StackSettings(home=tmp_path, kafka_brokers=5))
    single = Stack(StackSettings(home=tmp_path / "one"))
    assert single.kafka_settings.replication == "single-broker" and single.kafka.bootstrap == "127.0.0.1:9092"
