"""Rows for ClickHouse as Avro: the producer's own bytes, passed through when they are clean.

ClickHouse reads Avro itself (``INSERT ... FORMAT Avro``). An Avro record is the
concatenation of its fields' encodings, so a row for a table is the message body as the
producer wrote it followed by the encodings of the columns ingest adds (``pii_counts``,
derived lengths, a null ``user_id``, ``_topic``, ``_partition``, ``_offset``), and a batch is one Avro
object container block of such rows. For a message in the topic's current schema this
needs no decoding into Python objects and no re-encoding.

A message goes that way only when :meth:`AvroRows.passthrough` has walked its whole
body field by field and found it exactly as the full path would accept it:

- written with this codec's schema id, every field well framed, no byte left over;
- union branches and enum symbols in range, UUID fields canonical, ints within 32 and
  longs within 64 bits, unsigned fields not negative, every string valid UTF-8;
- the tenant's policy stores text and keeps no user id, and no text field the PII policy covers could
  contain anything a detector finds (:func:`~services.common.pii.maybe_pii`, a
  superset of every detector, applied to the decoded text).

Responses and requests have row formats (:func:`response_rows`, :func:`request_rows`;
a request row carries the message's ``messages``, which ClickHouse skips, and the prompt
columns built from them). The walker is compiled (``_avrowalk.pyx``) where the install
could build it; the straight-line Python version gives the same answers for flat
schemas, and without the compiled one requests take the full path.

Anything else (a PII candidate, an older or newer writer schema, a malformed body)
takes the full path: decode, validate (dead letter), protect, build the row, encode it.
Both paths produce rows of the same layout, so one batch is one insert and the
per-partition resume point (``max(_offset)``) stays exact.
"""

from __future__ import annotations

import io
import re
from functools import partial
from typing import Any, Callable

import fastavro

from services.common.codec import HEADER, MAGIC_BYTE, AvroCodec, _strip_logical
from services.common.pii import maybe_pii_utf8
from services.ingest.transforms import Protector, Row, TableSpec

_ONE_BYTE = [bytes((i,)) for i in range(0x80)]
# a uuid string field as Avro writes it: length 36 (zigzag 72 = "H"), then the canonical text
_UUID_FIELD = re.compile(rb"H[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# field kinds the walker knows; a schema with anything else has no passthrough. The
# collections (arrays of records of strings, arrays of strings, maps of strings) only the
# compiled walker frames.
_STR, _NSTR, _INT, _NINT, _DBL, _NDBL, _FLT, _NFLT, _BOOL, _ENUM, _ARR_REC, _ARR_STR, _MAP_STR = range(13)


def zigzag(n: int) -> bytes:
    """Avro's int/long encoding."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _kind(t: Any) -> tuple[int, int] | None:
    if isinstance(t, dict):
        if t.get("type") == "enum":
            return _ENUM, len(t["symbols"])
        if t.get("type") == "map":
            return (_MAP_STR, 0) if _kind(t["values"]) == (_STR, 0) else None
        if t.get("type") == "array":
            items = t["items"]
            if _kind(items) == (_STR, 0):
                return _ARR_STR, 0
            if (
                isinstance(items, dict)
                and items.get("type") == "record"
                and items["fields"]
                and all(_kind(f["type"]) == (_STR, 0) for f in items["fields"])
            ):
                return _ARR_REC, len(items["fields"])
            return None
        t = t.get("type")
    if isinstance(t, list):
        if len(t) == 2 and t[0] == "null":
            inner = _kind(t[1])
            if inner is None:
                return None
            nullable = {_STR: _NSTR, _INT: _NINT, _DBL: _NDBL, _FLT: _NFLT}.get(inner[0])
            return (nullable, inner[1]) if nullable is not None else None
        return None
    return {
        "string": (_STR, 0),
        "int": (_INT, 32),
        "long": (_INT, 64),
        "double": (_DBL, 0),
        "float": (_FLT, 0),
        "boolean": (_BOOL, 0),
    }.get(t)


def _clean(schema: Any) -> Any:
    """A parsed fastavro schema back to plain JSON-able Avro."""
    if isinstance(schema, dict):
        return {k: _clean(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_clean(s) for s in schema]
    return schema


class AvroRows:
    """The Avro row format of one table fed by one topic's schema (see the module doc).

    ``extra`` are the columns ingest adds after the message's own fields, in order,
    with their Avro types; ``derived(texts)`` computes their encodings for a clean
    message from what the walker returns for its text fields (in schema order: a text's
    raw bytes or ``None`` for null; every string of an array of records), or returns
    ``None`` to send the message the full way. Message fields the table has no column
    for stay in the row; ClickHouse skips them (the insert names its columns).
    """

    def __init__(
        self,
        spec: TableSpec,
        codec: AvroCodec,
        protector: Protector,
        *,
        text_fields: tuple[str, ...],
        uuid_fields: tuple[str, ...],
        unsigned_fields: tuple[str, ...],
        tenant_field: str = "tenant",
        extra: list[dict[str, Any]],
        derived: Callable[[list[bytes | None]], bytes],
    ) -> None:
        self.spec = spec
        self.codec = codec
        self.protector = protector
        source = _clean(codec.schema)
        fields = source["fields"] + extra
        names = [f["name"] for f in fields]
        self.columns = [c for c in names if c in spec.columns]  # the table's columns, in row order
        missing = set(spec.columns) - set(names)
        if missing or set(f["name"] for f in extra) - set(spec.columns):
            raise ValueError(f"{spec.table}: Avro row fields and table columns differ: {sorted(missing)}")
        # a skipped field's value in a full-path row (the table does not keep it)
        self._skipped = {f["name"]: _empty(f) for f in source["fields"] if f["name"] not in spec.columns}
        # ClickHouse maps Avro fields to columns by name: a sealed column's field carries the
        # name of its EPHEMERAL input column (names are not part of Avro's binary encoding)
        self.insert_columns = [spec.insert_name(c) for c in self.columns]
        row_fields = [{**f, "name": spec.insert_name(f["name"])} if f["name"] in spec.columns else f for f in fields]
        row_schema = {
            "type": "record",
            "name": f"{spec.table}_row",
            "namespace": "io.argus.ingest",
            "fields": row_fields,
        }
        self._header, self._sync = _container_header(fastavro.parse_schema(row_schema, named_schemas={}))
        self._plain = fastavro.parse_schema(_strip_logical(row_schema), named_schemas={})
        self._order = [spec.columns.index(c) for c in self.columns]  # row tuple position of each Avro field
        self._wire = HEADER.pack(MAGIC_BYTE, codec.schema_id)
        self._derived = derived
        self._walk: list[tuple[int, int, int]] | None = []  # (kind, arg, role)
        roles = {**{f: 1 for f in text_fields}, **{f: 2 for f in uuid_fields}, **{f: 3 for f in unsigned_fields}}
        for f in source["fields"]:
            k = _kind(f["type"])
            if k is None:
                self._walk = None  # a type the walker does not frame: every message takes the full path
                break
            self._walk.append((k[0], k[1], 4 if f["name"] == tenant_field else roles.get(f["name"], 0)))
        self._tail_cache: dict[tuple[str, int], bytes] = {}
        every_tenant_passes = self._passes(protector.default) and all(
            self._passes(p) for p in protector.tenants.values()
        )
        self._walker = (
            None
            if self._walk is None
            else make_walker(self._walk, None if every_tenant_passes else self._tenant_passes)
        )

    @staticmethod
    def _passes(policy: Any) -> bool:
        """Whether a tenant's messages may pass through: its policy stores text as the
        producer wrote it (clean texts), and keeps no user id (``user_id`` is null)."""
        return policy.store_text and not policy.keep_user

    def _tenant_passes(self, tenant: bytes) -> bool:
        return self._passes(self.protector.policy(tenant.decode()))

    # -- a batch -------------------------------------------------------------
    def block(self, rows: list[bytes]) -> bytes:
        """One Avro object container file holding ``rows`` (each an encoded row)."""
        data = b"".join(rows)
        return b"".join((self._header, zigzag(len(rows)), zigzag(len(data)), data, self._sync))

    # -- the full path -------------------------------------------------------
    def encode(self, row: Row) -> bytes:
        """A row built by the table's transform (validated, PII protected), as Avro."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(
            buf, self._plain, {**self._skipped, **{c: row[i] for c, i in zip(self.insert_columns, self._order)}}
        )
        return buf.getvalue()

    # -- the passthrough -----------------------------------------------------
    def passthrough(self, value: bytes | None, topic: str, partition: int, offset: int) -> bytes | None:
        """The row for a clean message in the current schema, or ``None`` (full path)."""
        if self._walker is None or value is None or value[:5] != self._wire:
            return None
        texts = self._walker(value)
        if texts is None:
            return None
        derived = self._derived(texts)
        if derived is None:
            return None
        key = (topic, partition)
        tail = self._tail_cache.get(key)
        if tail is None:  # user_id null (a tenant that keeps it takes the full path), topic, partition
            t = topic.encode()
            tail = self._tail_cache[key] = b"\x00" + zigzag(len(t)) + t + zigzag(partition)
        return b"".join((value[5:], derived, tail, zigzag(offset)))


def _empty(field: dict[str, Any]) -> Any:
    """A valid value for a field a full-path row leaves empty: its default, else empty."""
    if "default" in field:
        return field["default"]
    t = field["type"]
    kind = t.get("type") if isinstance(t, dict) else t
    return (
        {"array": [], "map": {}, "string": "", "long": 0, "int": 0, "double": 0.0, "float": 0.0, "boolean": False}.get(
            kind
        )
        if not isinstance(t, list)
        else None
    )


def _long_at(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, next position)."""
    n, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            if n >> 64:
                raise IndexError("varint beyond 64 bits")
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise IndexError("varint longer than 10 bytes")


def _compile_walker(
    walk: list[tuple[int, int, int]], stores_text: Callable[[bytes], bool] | None
) -> Callable[[bytes], Any] | None:
    """Straight-line Python for one schema: frames every field of a wire-format body,
    checks what the full path would check, and returns the raw text fields (in order),
    or ``None`` when the message must take the full path. ``stores_text`` is ``None``
    when every tenant's policy stores text (no tenant check needed). A schema with
    collections has no Python walker (``None``): only the compiled one frames them."""
    if any(kind >= _ARR_REC for kind, _, _ in walk):
        return None
    lines = ["def walk(buf):", "    pos = 5", "    end = len(buf)", "    texts = []", "    try:"]
    put = lambda code, depth: lines.extend("    " * depth + c for c in code.splitlines())  # noqa: E731

    def length(depth: int) -> None:  # a string's length: one byte up to 63, two up to 8191
        put(
            "b = buf[pos]\n"
            "if b < 0x80:\n    n = (b >> 1) ^ -(b & 1)\n    pos += 1\n"
            "elif buf[pos + 1] < 0x80:\n    n = (b & 0x7F | buf[pos + 1] << 7)\n    n = (n >> 1) ^ -(n & 1)\n    pos += 2\n"
            "else:\n    n, pos = _long_at(buf, pos)",
            depth,
        )

    def int_in_range(depth: int, bits: int, unsigned: bool) -> None:  # an int or long the full path can store
        put(
            "b = buf[pos]\n"
            "if b < 0x80:\n    pos += 1\n    v = (b >> 1) ^ -(b & 1)\n"
            "else:\n    v, pos = _long_at(buf, pos)",
            depth,
        )
        put(f"if not {0 if unsigned else -(1 << (bits - 1))} <= v < {1 << (bits - 1)}:\n    return None", depth)

    for kind, arg, role in walk:
        depth = 2
        if kind in (_NSTR, _NINT, _NDBL, _NFLT):
            put("u = buf[pos]\npos += 1", depth)
            if role == 1:
                put("if u == 0:\n    texts.append(None)", depth)
                put("elif u != 2:\n    return None\nelse:", depth)
            else:
                put("if u != 0:\n    if u != 2:\n        return None", depth)
            depth += 1
            kind -= 1
        if kind == _STR and role == 2:  # a canonical UUID: length 36, then the text
            put("if not _UUID_FIELD.match(buf, pos):\n    return None\npos += 37", depth)
        elif kind == _STR:
            length(depth)
            put("e = pos + n\nif n < 0 or e > end:\n    return None\ns = buf[pos:e]\npos = e", depth)
            if role == 1:  # a text the PII policy covers: it must be clean to pass through
                put("if maybe_pii(s):\n    return None\ntexts.append(s)", depth)
            else:
                put("if not s.isascii():\n    s.decode()", depth)
            if role == 4 and stores_text is not None:
                put("if not stores_text(s):\n    return None", depth)
        elif kind == _ENUM:  # an index below 64 is one even byte
            put(f"b = buf[pos]\nif b > 0x7F or b & 1 or b >> 1 >= {arg}:\n    return None\npos += 1", depth)
        elif kind == _INT:
            int_in_range(depth, arg, role == 3)
        elif kind in (_DBL, _FLT):
            put(f"pos += {8 if kind == _DBL else 4}", depth)
        elif kind == _BOOL:
            put("if buf[pos] > 1:\n    return None\npos += 1", depth)
    lines += [
        "    except (IndexError, UnicodeDecodeError):",
        "        return None",
        "    return texts if pos == end else None",
    ]
    scope = {"_long_at": _long_at, "_UUID_FIELD": _UUID_FIELD, "stores_text": stores_text, "maybe_pii": maybe_pii_utf8}
    exec(compile("\n".join(lines), f"<avro walker {len(walk)} fields>", "exec"), scope)  # noqa: S102 - code built above from the schema
    return scope["walk"]


try:  # the same walker compiled (setup.py builds it; a machine without a C compiler has only the Python one)
    from services.ingest._avrowalk import Walker as _NativeWalker
    from services.ingest._avrowalk import ascii_maybe_pii as _native_ascii_screen
    from services.ingest._avrowalk import request_columns as _native_request_columns
except ImportError:  # pragma: no cover - depends on the install
    _NativeWalker = _native_ascii_screen = _native_request_columns = None

#: which walker ingest uses: "native" (compiled) or "python"
WALKER = "native" if _NativeWalker is not None else "python"


def make_walker(
    walk: list[tuple[int, int, int]], stores_text: Callable[[bytes], bool] | None, native: bool | None = None
) -> Callable[[bytes], Any] | None:
    """The walker of one schema: the compiled one where it is built (``native=None``),
    else the straight-line Python of :func:`_compile_walker`; both give the same answers."""
    if native is None:
        native = _NativeWalker is not None
    if native:
        if _NativeWalker is None:
            raise RuntimeError("the compiled walker services.ingest._avrowalk is not built (pip install -e .)")
        return _NativeWalker(walk, maybe_pii_utf8, stores_text)
    return _compile_walker(walk, stores_text)


def _container_header(schema: Any) -> tuple[bytes, bytes]:
    """The header (magic, metadata with the writer schema, sync marker) of an Avro object
    container file and its sync marker, from fastavro itself."""
    buf = io.BytesIO()
    fastavro.writer(buf, schema, [], codec="null")
    head = buf.getvalue()
    return head, head[-16:]


def _chars(s: bytes | None) -> int:
    if s is None:
        return 0
    return len(s) if s.isascii() else len(s.decode())


def response_rows(spec: TableSpec, codec: AvroCodec, protector: Protector) -> AvroRows:
    """The row format of ``inference_responses``: the response as produced, then
    ``output_chars``, ``pii_counts`` (empty: a passed-through message has no findings),
    a null ``user_id`` and the Kafka coordinates."""

    def derived(texts: list[bytes | None]) -> bytes:  # texts: output, error_message
        return zigzag(_chars(texts[0])) + b"\x00"

    return AvroRows(
        spec,
        codec,
        protector,
        text_fields=("output", "error_message"),
        uuid_fields=("request_id", "response_id"),
        unsigned_fields=("input_tokens", "output_tokens", "replica_cpu_memory_bytes", "replica_gpu_memory_bytes"),
        extra=[
            {"name": "output_chars", "type": "long"},
            {"name": "pii_counts", "type": {"type": "map", "values": "long"}},
            {"name": "user_id", "type": ["null", "string"]},
            {"name": "_topic", "type": "string"},
            {"name": "_partition", "type": "int"},
            {"name": "_offset", "type": "long"},
        ],
        derived=derived,
    )


def _screen(raw: bytes) -> bool:
    """The PII screen of UTF-8 bytes, compiled for ASCII where it is built."""
    if _native_ascii_screen is not None and raw.isascii():
        return _native_ascii_screen(raw)
    return maybe_pii_utf8(raw)


def request_columns(texts: list[bytes]) -> bytes | None:
    """The derived columns of a request row (see :func:`request_rows`) from the role and
    content of every message, in order; ``None`` when the prompt or system prompt may hold
    PII. ``_avrowalk.request_columns`` is the same, compiled, and used where it is built."""
    convo, system = [], []
    for i in range(0, len(texts), 2):
        if texts[i] == b"system":
            system.append(texts[i + 1])
        else:
            convo.append(texts[i] + b": " + texts[i + 1])
    prompt = b"\n\n".join(convo)
    system_prompt = b"\n".join(system)
    if _screen(prompt) or (system_prompt and _screen(system_prompt)):
        return None
    return b"".join(
        (
            b"\x02",
            zigzag(len(prompt)),
            prompt,
            b"\x02" + zigzag(len(system_prompt)) + system_prompt if system_prompt else b"\x00",
            zigzag(len(texts) >> 1),
            zigzag(_chars(prompt)),
            b"\x00",
        )
    )


def request_rows(spec: TableSpec, codec: AvroCodec, protector: Protector) -> AvroRows:
    """The row format of ``inference_requests``: the request as produced (ClickHouse skips
    ``messages``, ``stop_sequences`` and ``seed``, which the table does not keep), then
    the columns the full path computes from the messages: ``prompt`` (the non-system
    messages as ``role: content`` joined by blank lines), ``system_prompt`` (the system
    messages joined by newlines, null when that is empty), ``message_count``,
    ``prompt_chars``, an empty ``pii_counts``, a null ``user_id`` and the Kafka coordinates. A request
    passes through only when the walker found every metadata key and value clean and the
    assembled prompt and system prompt are clean too: the screen sees exactly the texts
    the full path protects."""

    derived = (
        request_columns if _native_request_columns is None else partial(_native_request_columns, screen=maybe_pii_utf8)
    )
    return AvroRows(
        spec,
        codec,
        protector,
        text_fields=("messages", "metadata"),
        uuid_fields=("request_id",),
        unsigned_fields=("max_tokens",),
        extra=[
            {"name": "prompt", "type": ["null", "string"]},
            {"name": "system_prompt", "type": ["null", "string"]},
            {"name": "message_count", "type": "int"},
            {"name": "prompt_chars", "type": "long"},
            {"name": "pii_counts", "type": {"type": "map", "values": "long"}},
            {"name": "user_id", "type": ["null", "string"]},
            {"name": "_topic", "type": "string"},
            {"name": "_partition", "type": "int"},
            {"name": "_offset", "type": "long"},
        ],
        derived=derived,
    )


def avro_rows_for(topic_key: str, spec: TableSpec, protector: Protector, registry: Any = None) -> AvroRows | None:
    """The Avro row format of a topic's table, where ingest has one: the request and
    response topics, the high-volume tables (one row per inference)."""
    from services.common.registry import default_registry

    reg = registry or default_registry()
    if spec.table == "inference_responses":
        return response_rows(spec, reg.codec(topic_key), protector)
    if spec.table == "inference_requests":
        return request_rows(spec, reg.codec(topic_key), protector)
    return None
