"""What the CLI reads and writes on the governance topics, signed by the person running
it: the whole of a one-partition topic, a record published (acks=all), a person's key,
and a person's audit submission (docs/governance.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

from services.cli.base import fail as _fail
from services.cli.base import settings as _settings


def read_all(key: str) -> list[dict]:
    """Every record of a one-partition registry topic, from the beginning (plain values)."""
    from services.common.statetopic import read_topic

    return asyncio.run(read_topic(_settings().kafka, key))


def signer_for(by: str, key: Optional[Path]):  # noqa: ANN202 - Signer
    from services.common.governance import Signer, key_path
    from services.common.signing import SignatureError

    try:
        return Signer.load(by, key or key_path(by))
    except (SignatureError, OSError, ValueError) as exc:
        _fail(f"cannot sign as {by}: {exc}")


def publish(key: str, rec: dict, kafka_key: str) -> None:
    from services.common.kafka import make_producer
    from services.common.registry import get_codec

    s = _settings()

    async def run() -> None:
        producer = make_producer(s.kafka)
        try:
            await producer.start()
            await producer.send_and_wait(s.kafka.topic(key), get_codec(key).encode(rec), key=kafka_key.encode())
        finally:
            await producer.stop()  # also after a failed start: nothing left open

    asyncio.run(run())


def submit(signer, action: str, subject: str, detail: dict) -> dict:  # noqa: ANN001
    """Publish a person's signed submission on argus.audit; the retraining service
    witnesses it into its chain (docs/governance.md)."""
    from services.common.audit import submission

    ev = submission(signer, action, subject, detail)
    try:
        publish("audit", ev, ev["writer"])
    except Exception as exc:  # the broker unreachable or refusing: nothing was recorded, say so plainly
        _fail(f"the audit trail (argus.audit) did not take the {action} event: {type(exc).__name__}: {exc}")
    return ev


def sign_policy_file(
    config: Path, kind: str, action: str, by: str, key: Optional[Path], out: Optional[Path], detail: dict
):  # noqa: ANN201
    """Sign a policy file (alerting rules, retraining policies) as ``by``: the audit trail
    records the signing first, then the detached signature is written (default
    ``CONFIG.sig``), so a signature exists only once the trail holds it. Returns
    (signature document, its path)."""
    import json

    import yaml

    signer = signer_for(by, key)
    signed = signer.sign_policy(kind, yaml.safe_load(config.read_text()))
    submit(signer, action, signed["sha256"], {"file": config.name, **detail})
    target = out or Path(f"{config}.sig")
    target.write_text(json.dumps(signed, indent=2, sort_keys=True) + "\n")
    return signed, target
