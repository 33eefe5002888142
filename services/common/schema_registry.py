"""Client for a Confluent-compatible schema registry (Confluent Schema Registry,
Karapace, Apicurio's ccompat API, Redpanda).

When ``kafka.schema_registry_url`` is set, :func:`configure_registry` registers every
schema version of the local registry under ``<topic>-value`` (TopicNameStrategy) and
the codecs then write the ids that registry assigned, so consumers written with
Confluent's own deserializers resolve them there. Unknown ids met while decoding are
looked up with ``GET /schemas/ids/{id}``.
"""

from __future__ import annotations

import json
import time

import httpx

from services.common.registry import SchemaRegistry, default_registry
from services.common.settings import KafkaSettings

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistryError(RuntimeError):
    pass


class ConfluentSchemaRegistry:
    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        auth = httpx.BasicAuth(username, password or "") if username else None
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            auth=auth,
            timeout=timeout_s,
            transport=transport,
            headers={"Accept": CONTENT_TYPE},
        )
        self._retries = retries
        self._by_id: dict[int, str] = {}

    def _request(self, method: str, path: str, **kw) -> httpx.Response:  # noqa: ANN003
        delay = 0.2
        for attempt in range(self._retries + 1):
            try:
                r = self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if attempt == self._retries:
                    raise SchemaRegistryError(f"schema registry unreachable: {exc}") from exc
            else:
                if r.status_code < 500 or attempt == self._retries:
                    return r
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def register(self, subject: str, schema: str) -> int:
        """Register (or find) ``schema`` under ``subject``; returns its global id."""
        r = self._request(
            "POST",
            f"/subjects/{subject}/versions",
            content=json.dumps({"schema": schema}),
            headers={"Content-Type": CONTENT_TYPE},
        )
        if r.status_code == 409:
            raise SchemaRegistryError(f"{subject}: schema is incompatible with the registered versions: {r.text}")
        if r.status_code != 200:
            raise SchemaRegistryError(f"{subject}: registration failed ({r.status_code}): {r.text}")
        schema_id = int(r.json()["id"])
        self._by_id[schema_id] = schema
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        if schema_id in self._by_id:
            return self._by_id[schema_id]
        r = self._request("GET", f"/schemas/ids/{schema_id}")
        if r.status_code == 404:
            raise KeyError(schema_id)
        if r.status_code != 200:
            raise SchemaRegistryError(f"lookup of schema id {schema_id} failed ({r.status_code}): {r.text}")
        schema = r.json()["schema"]
        self._by_id[schema_id] = schema
        return schema


def configure_registry(kafka: KafkaSettings, registry: SchemaRegistry | None = None) -> SchemaRegistry:
    """Called once at service start-up: use the remote registry when one is configured."""
    reg = registry or default_registry()
    if kafka.schema_registry_url:
        reg.use_remote(
            ConfluentSchemaRegistry(
                kafka.schema_registry_url,
                kafka.schema_registry_username,
                kafka.schema_registry_password.get_secret_value() if kafka.schema_registry_password else None,
            )
        )
    return reg
