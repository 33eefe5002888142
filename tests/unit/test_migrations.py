from __future__ import annotations

from pathlib import Path

import pytest

from services.common.migrations import Migration, MigrationError, load


def test_statements_are_split_and_database_substituted() -> None:
    m = Migration(
        1,
        "x",
        "-- comment; not a statement\nCREATE TABLE {db}.a (x UInt8) ENGINE = Memory;\n\nCREATE TABLE {db}.b (s String) ENGINE = Memory;\n",
    )
    assert m.statements("argus") == [
        "CREATE TABLE argus.a (x UInt8) ENGINE = Memory",
        "CREATE TABLE argus.b (s String) ENGINE = Memory",
    ]


def test_shipped_migrations_load_in_order() -> None:
    migs = load()
    assert [m.version for m in migs] == sorted(m.version for m in migs)
    assert migs[0].name == "dead_letters"


def test_misnamed_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError):
        load(tmp_path)
