"""Helpers the integration tests share."""

from __future__ import annotations

import asyncio
import os
import sys

from services.common.settings import KafkaSettings
from tests.conftest import REPO


async def cli(kafka: KafkaSettings, *args: str, timeout_s: float = 90) -> str:
    """Run ``argus ARGS`` the way a user does, against the test's topics; its stdout."""
    env = {
        **os.environ,
        "ARGUS_CLI_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "ARGUS_CLI_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, errout = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode == 0, (args, errout.decode())
    return out.decode()
