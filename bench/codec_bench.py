"""Wire codec throughput: Argus's codec (fastavro, schema parsed once, Confluent wire
format) against Apache Avro's reference Python implementation on the same records."""

from __future__ import annotations

import io
import struct
import time

from bench.common import Result


def run(n: int = 20000) -> list[Result]:
    import avro.io
    import avro.schema

    from services.common.codec import fill_defaults
    from services.common.registry import default_registry, get_codec

    reg = default_registry()
    codec = get_codec("inference-requests")
    record = reg.examples("inference-requests")[1][1][1]  # minimal.json
    record = fill_defaults(reg.schema_json("inference_request", 1), record)
    import datetime as dt

    ref_record = dict(record, created_at=dt.datetime.fromtimestamp(record["created_at"] / 1000, tz=dt.timezone.utc))
    schema = avro.schema.parse(reg.schema_file("inference_request", 1).read_text())
    writer, reader = avro.io.DatumWriter(schema), avro.io.DatumReader(schema)
    header = b"\x00" + struct.pack(">I", codec.schema_id)

    t = time.perf_counter()
    for _ in range(n):
        codec.decode(codec.encode(record))
    ours = n / (time.perf_counter() - t)

    t = time.perf_counter()
    for _ in range(n // 4):
        buf = io.BytesIO()
        buf.write(header)
        writer.write(ref_record, avro.io.BinaryEncoder(buf))
        data = buf.getvalue()
        reader.read(avro.io.BinaryDecoder(io.BytesIO(data[5:])))
    ref = (n // 4) / (time.perf_counter() - t)
    return [Result("codec", "InferenceRequest encode+decode", ours, "Apache Avro (Python)", ref, "msg/s", "ratio >= 3")]
