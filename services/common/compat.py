"""Schema evolution check, run in CI: every golden example of every version must be
readable by every version the topic's compatibility mode promises.

- BACKWARD: the newest reader reads data written with each older version.
- FORWARD: each older reader reads data written with the newest version.
- FULL: both. Also, every example must validate against its own version.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import fastavro

from services.common.registry import SchemaRegistry


@dataclass(frozen=True)
class CompatProblem:
    topic: str
    detail: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.detail}"


def check_registry(reg: SchemaRegistry) -> list[CompatProblem]:
    problems: list[CompatProblem] = []
    for key, spec in sorted(reg.topics.items()):
        versions = reg.versions(spec.schema)
        if spec.version not in versions:
            problems.append(CompatProblem(key, f"current version {spec.version} has no .avsc file"))
            continue
        for ver in versions:
            if (spec.schema, ver) not in reg.ids:
                problems.append(CompatProblem(key, f"{spec.schema}.v{ver} has no schema id"))
        examples = reg.examples(key)
        if not examples.get(spec.version) and not any(examples.values()):
            problems.append(CompatProblem(key, "no golden examples"))
        newest = max(versions)
        for ver, items in examples.items():
            writer = reg.parsed(spec.schema, ver)
            for path, record in items:
                try:
                    fastavro.validation.validate(record, writer, raise_errors=True)
                except (ValueError, TypeError, fastavro.validation.ValidationError) as exc:
                    problems.append(CompatProblem(key, f"{path.name} is not a valid v{ver} record: {exc}"))
                    continue
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, writer, record)
                readers: list[int] = []
                if spec.compatibility in ("BACKWARD", "FULL"):
                    readers += [v for v in versions if v > ver]
                if spec.compatibility in ("FORWARD", "FULL") and ver == newest:
                    readers += [v for v in versions if v < ver]
                for reader_ver in readers:
                    try:
                        fastavro.schemaless_reader(
                            io.BytesIO(buf.getvalue()), writer, reg.parsed(spec.schema, reader_ver)
                        )
                    except Exception as exc:  # any failure here is the finding we report
                        problems.append(
                            CompatProblem(key, f"v{reader_ver} cannot read {path.name} written as v{ver}: {exc!r}")
                        )
    return problems
