"""Avro in the Confluent wire format: magic byte ``0``, a 4-byte big-endian schema id,
then the Avro binary body. Any standard Confluent Avro serializer (Java, Go, JS, ...)
produces and reads the same bytes, so producers need nothing from Argus.

A codec encodes with its topic's current schema and decodes whatever schema id the
writer used, resolving the writer schema to its own reader schema (Avro schema
evolution), so consumers keep working while producers move to a newer version.
"""

from __future__ import annotations

import io
import struct
from typing import Any, Callable

import fastavro
from fastavro.validation import ValidationError, validate

from services.common.errors import describe

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")


class SerializationError(ValueError):
    """A message could not be encoded or decoded. Carries a reason fit for a dead letter."""


def wire_header(schema_id: int) -> bytes:
    return HEADER.pack(MAGIC_BYTE, schema_id)


def split_wire(data: bytes) -> tuple[int, memoryview]:
    """Return ``(schema_id, avro_body)`` of a wire-format message."""
    if data is None:
        raise SerializationError("message has no value (tombstone) where a record was expected")
    if len(data) < HEADER.size:
        raise SerializationError(f"message is {len(data)} bytes, shorter than the 5-byte wire header")
    magic, schema_id = HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise SerializationError(f"message does not start with the Confluent magic byte 0 (got {magic & 0xFF})")
    return schema_id, memoryview(data)[HEADER.size :]


class AvroCodec:
    """Encoder/decoder for one record schema version.

    ``writer_lookup(schema_id)`` returns the parsed writer schema for ids other than
    this codec's own (older or newer versions, or ids from a schema registry).

    Example::

        >>> codec = get_codec("inference-requests")          # doctest: +SKIP
        >>> codec.decode(codec.encode(record)) == record       # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        version: int,
        schema_id: int,
        parsed_schema: Any,
        writer_lookup: Callable[[int], Any],
    ) -> None:
        self.name = name
        self.version = version
        self.schema_id = schema_id
        self.schema = parsed_schema
        self._writer_lookup = writer_lookup
        self._header = wire_header(schema_id)
        self._plain_reader: Any = None
        self._plain_writers: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"AvroCodec({self.name}.v{self.version}, id={self.schema_id})"

    def encode(self, record: dict[str, Any]) -> bytes:
        try:
            validate(record, self.schema, raise_errors=True)
            buf = io.BytesIO()
            buf.write(self._header)
            fastavro.schemaless_writer(buf, self.schema, record)
        except ValidationError as exc:
            # the field path only: fastavro's message goes on with the value ("<path> is <value> of type ...")
            detail = "; ".join(f"{str(e).split(' is ')[0]} does not match its type" for e in exc.errors)[:1000]
            raise SerializationError(f"record does not match {self.name}.v{self.version}: {detail}") from exc
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SerializationError(f"record does not match {self.name}.v{self.version}: {describe(exc)}") from exc
        return buf.getvalue()

    def decode_plain(self, data: bytes) -> dict[str, Any]:
        """Like :meth:`decode` without logical-type conversion: uuids stay strings and
        timestamps epoch milliseconds. Sinks that write those as they are (ClickHouse
        takes both) skip building ``UUID`` and ``datetime`` objects per message."""
        if self._plain_reader is None:
            self._plain_reader = fastavro.parse_schema(_strip_logical(self.schema), named_schemas={})
        if len(data or b"") >= HEADER.size and data[0] == MAGIC_BYTE and HEADER.unpack_from(data)[1] == self.schema_id:
            # same binary layout as our own schema: read it as the plain schema directly
            return self._read(self.schema_id, memoryview(data)[HEADER.size :], self._plain_reader, None)
        # another writer version (older, newer, a registry's): resolved into the plain reader
        schema_id, body = split_wire(data)
        writer = self._plain_writers.get(schema_id)
        if writer is None:
            try:
                writer = fastavro.parse_schema(_strip_logical(self._writer_lookup(schema_id)), named_schemas={})
            except KeyError as exc:
                raise SerializationError(f"unknown schema id {schema_id}") from exc
            self._plain_writers[schema_id] = writer
        return self._read(schema_id, body, writer, self._plain_reader)

    def decode(self, data: bytes) -> dict[str, Any]:
        schema_id, body = split_wire(data)
        if schema_id == self.schema_id:
            writer = self.schema
        else:
            try:
                writer = self._writer_lookup(schema_id)
            except KeyError as exc:
                raise SerializationError(f"unknown schema id {schema_id}") from exc
        return self._read(schema_id, body, writer, self.schema)

    def _read(self, schema_id: int, body: memoryview, writer: Any, reader: Any) -> dict[str, Any]:
        stream = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(stream, writer, reader)
        except (ValueError, TypeError, EOFError, IndexError, KeyError, struct.error, UnicodeDecodeError) as exc:
            raise SerializationError(
                f"cannot decode {self.name}.v{self.version} from writer schema id {schema_id}: {describe(exc)}"
            ) from exc
        except fastavro.read.SchemaResolutionError as exc:
            raise SerializationError(
                f"schema id {schema_id} is not readable as {self.name}.v{self.version}: {describe(exc)}"
            ) from exc
        if stream.tell() != len(body):
            raise SerializationError(
                f"{len(body) - stream.tell()} trailing bytes after the {self.name} record (wrong schema id?)"
            )
        return record


def _strip_logical(schema: Any) -> Any:
    """A copy of a (parsed) schema without logical types."""
    if isinstance(schema, list):
        return [_strip_logical(s) for s in schema]
    if isinstance(schema, dict):
        out = {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
        if "fields" in schema:
            out["fields"] = [dict(f, type=_strip_logical(f["type"])) for f in schema["fields"]]
        return out
    return schema


def from_json(schema: Any, value: Any) -> Any:
    """Turn a plain JSON value (golden examples, ``argus produce`` input) into what
    fastavro expects: JSON has no bytes, so strings become bytes where the schema says
    ``bytes``. Timestamps stay epoch milliseconds, uuids stay strings."""
    if isinstance(schema, list):  # union: pick the first branch the value fits
        if value is None:
            return None
        for branch in schema:
            if branch == "null":
                continue
            try:
                candidate = from_json(branch, value)
                if validate(candidate, branch, raise_errors=False):
                    return candidate
            except (TypeError, ValueError):
                continue
        return value
    if isinstance(schema, str):
        if schema == "bytes" and isinstance(value, str):
            return value.encode("utf-8")
        return value
    kind = schema.get("type")
    if kind == "record" and isinstance(value, dict):
        out = dict(value)
        for field in schema["fields"]:
            if field["name"] in out:
                out[field["name"]] = from_json(field["type"], out[field["name"]])
        return out
    if kind == "array" and isinstance(value, list):
        return [from_json(schema["items"], v) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: from_json(schema["values"], v) for k, v in value.items()}
    if kind in ("bytes",) and isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(kind, (dict, list)):
        return from_json(kind, value)
    return value


def to_json(value: Any) -> Any:
    """Inverse of :func:`from_json` for decoded records: datetimes become epoch
    milliseconds, UUIDs strings, bytes UTF-8 text (or ``\\x`` escapes), so a decoded
    record compares equal to its golden example and prints as JSON."""
    import datetime as _dt
    import uuid as _uuid

    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return int(round(value.timestamp() * 1000))
    if isinstance(value, _uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    return value


def fill_defaults(schema: Any, value: Any) -> Any:
    """``value`` with every omitted field set to its schema default, as a reader sees it.
    Lets a golden example that omits optional fields compare equal to its decoding."""
    if isinstance(schema, list):
        if value is None:
            return None
        for branch in schema:
            if isinstance(branch, dict) and branch.get("type") == "record" and isinstance(value, dict):
                return fill_defaults(branch, value)
        return value
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "record" and isinstance(value, dict):
            out = dict(value)
            for f in schema["fields"]:
                if f["name"] in out:
                    out[f["name"]] = fill_defaults(f["type"], out[f["name"]])
                elif "default" in f:
                    out[f["name"]] = f["default"]
            return out
        if kind == "array" and isinstance(value, list):
            return [fill_defaults(schema["items"], v) for v in value]
        if kind == "map" and isinstance(value, dict):
            return {k: fill_defaults(schema["values"], v) for k, v in value.items()}
        if isinstance(kind, (dict, list)):
            return fill_defaults(kind, value)
    return value
