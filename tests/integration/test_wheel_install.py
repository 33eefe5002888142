"""The contracts ship inside the wheel: built from this tree, installed (not editable) in
a fresh virtualenv outside the repository, ``argus schemas check`` validates the shipped
schemas and examples and ``argus schemas roundtrip`` sends every golden example through
the test broker, with the working directory far from any ``schemas/`` folder.

The fresh venv borrows the project venv's third-party packages through a path entry
(installing Ray and the rest again would take minutes); the project venv's editable
hook is a ``.pth`` file that a plain path entry does not run, and the test checks that
``services`` is imported from the installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from services.common.settings import KafkaSettings
from tests.conftest import REPO


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_the_installed_wheel_carries_its_contracts(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    # nothing of the checkout may leak into the fresh environment (a PYTHONPATH pointing at
    # it would make pip believe the package is already installed)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        cwd=tmp_path,
        env=clean,
    )
    (wheel,) = dist.glob("argus_llmops-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=clean
        ).strip()
    )
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
        cwd=tmp_path,
        env=clean,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean | {
        **kafka_settings.as_env("ARGUS_CLI_"),
        "COLUMNS": "200",
    }
    where = run(
        [str(py), "-c", "import services.common.contracts as c; print(c.__file__); print(c.contract_path('schemas'))"],
        cwd=elsewhere,
        env=env,
    ).split()
    assert all(str(site) in w for w in where) and not any(str(REPO) in w for w in where), where
    assert (Path(where[1]) / "topics" / "inference-requests.yaml").is_file()
    assert not Path(where[1]).is_symlink()  # the wheel holds the files, not links into a checkout

    argus = env_dir / "bin" / "argus"
    assert "examples valid, versions compatible" in run([str(argus), "schemas", "check"], cwd=elsewhere, env=env)
    out = run([str(argus), "schemas", "roundtrip"], cwd=elsewhere, env=env, timeout=180)
    assert "golden examples round-tripped through Kafka" in out, out
    # the default configurations and the ClickHouse migrations came along too
    run([str(argus), "alerting", "check"], cwd=elsewhere, env=env)
    run([str(argus), "retraining", "check"], cwd=elsewhere, env=env)
    migrations = run(
        [str(py), "-c", "from services.common.migrations import load; print(len(load()))"], cwd=elsewhere, env=env
    )
    assert int(migrations) >= 6
