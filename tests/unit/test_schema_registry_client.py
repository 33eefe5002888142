"""The Confluent-compatible registry client's request/response handling, isolated with
httpx's MockTransport (no network in unit tests). Note: no real Confluent-compatible
registry runs on the CI machine, so the remote path is only covered here."""

from __future__ import annotations

import json

import httpx
import pytest

from services.common.registry import SCHEMAS_DIR, SchemaRegistry
from services.common.schema_registry import ConfluentSchemaRegistry, SchemaRegistryError


class RegistryLogic:
    """Confluent registry semantics the client relies on: one id per distinct schema."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts[0] == "subjects":
            schema = json.loads(request.content)["schema"]
            sid = self.ids.setdefault(schema, 100 + len(self.ids))
            self.subjects.setdefault(parts[1], []).append(sid)
            return httpx.Response(200, json={"id": sid})
        if request.method == "GET" and parts[:2] == ["schemas", "ids"]:
            for schema, sid in self.ids.items():
                if sid == int(parts[2]):
                    return httpx.Response(200, json={"schema": schema})
            return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
        return httpx.Response(500)


def test_registry_ids_are_used_on_the_wire() -> None:
    logic = RegistryLogic()
    client = ConfluentSchemaRegistry("http://registry:8081", transport=httpx.MockTransport(logic))
    reg = SchemaRegistry(SCHEMAS_DIR)
    reg.use_remote(client)
    assert "argus.inference.requests-value" in logic.subjects
    codec = reg.codec("inference-requests")
    assert codec.schema_id >= 100
    record = reg.examples("inference-requests")[1][0][1]
    data = codec.encode(record)
    assert int.from_bytes(data[1:5], "big") == codec.schema_id
    assert reg.codec("inference-requests").decode(data)["tenant"] == record["tenant"]


def test_unknown_id_is_a_key_error_and_conflicts_are_explained() -> None:
    def conflict(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(409, json={"error_code": 409, "message": "incompatible"})
        return httpx.Response(404, json={"error_code": 40403})

    client = ConfluentSchemaRegistry("http://registry:8081", transport=httpx.MockTransport(conflict), retries=0)
    with pytest.raises(KeyError):
        client.get_schema(7)
    with pytest.raises(SchemaRegistryError, match="incompatible"):
        client.register("x-value", "{}")
