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
