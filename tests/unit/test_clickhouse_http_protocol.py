"""Request parsing of the ClickHouse HTTP endpoint (no server needed)."""

from __future__ import annotations

import gzip

import lz4.frame
import pytest
import zstandard

from services.stack.clickhouse_http import (
    ClickHouseError,
    compress_response,
    decompress_body,
    engine_error,
    result_format,
    split_query,
)


def test_query_in_url_and_data_in_body() -> None:
    p = split_query("INSERT INTO t (a, b) FORMAT Native", b"\x02\x01binary")
    assert p.sql == "INSERT INTO t (a, b)" and p.insert_format == "Native" and p.data == b"\x02\x01binary"


def test_insert_with_data_in_the_body() -> None:
    p = split_query(None, b"INSERT INTO t FORMAT TabSeparated\n1\tx\n2\ty\n")
    assert p.insert_format == "TabSeparated" and p.data == b"1\tx\n2\ty\n"


def test_values_insert_and_select_run_as_they_are() -> None:
    assert split_query(None, b"INSERT INTO t VALUES (1, 'FORMAT x')").insert_format is None
    p = split_query("SELECT 1", b"")
    assert p.sql == "SELECT 1" and p.insert_format is None
    # query param followed by body: concatenated
    assert split_query("SELECT", b"1 AS x").sql == "SELECT\n1 AS x"


def test_leading_comments_do_not_hide_an_insert() -> None:
    p = split_query(None, b"-- load\n/* batch */ INSERT INTO t FORMAT CSV\n1,2\n")
    assert p.insert_format == "CSV" and p.data == b"1,2\n"


def test_result_format_from_query_or_default() -> None:
    assert result_format("SELECT 1 FORMAT JSON", "TabSeparated") == "JSON"
    assert result_format("SELECT 'FORMAT JSON' AS x", "Native") == "Native"


def test_lz4_body_with_several_frames_decodes_all_of_them() -> None:
    parts = [b"a" * 1000, b"b" * 2000, b"c" * 10]
    body = b"".join(lz4.frame.compress(p) for p in parts)
    assert decompress_body(body, "lz4") == b"".join(parts)


def test_zstd_and_gzip_bodies() -> None:
    data = b"x" * 5000
    assert decompress_body(zstandard.ZstdCompressor().compress(data) * 2, "zstd") == data * 2
    assert decompress_body(gzip.compress(data), "gzip") == data


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ClickHouseError) as e:
        decompress_body(b"x", "snappy")
    assert e.value.code == 48


def test_response_compression_follows_accept_encoding() -> None:
    data = b"row\n" * 100
    body, enc = compress_response(data, "gzip, deflate")
    assert enc == "gzip" and gzip.decompress(body) == data
    assert compress_response(data, "br") == (data, None)


def test_engine_errors_keep_the_clickhouse_code_and_name() -> None:
    e = engine_error(
        RuntimeError("Code: 60. DB::Exception: Unknown table expression identifier 'nope'. (UNKNOWN_TABLE)")
    )
    assert (e.code, e.name) == (60, "UNKNOWN_TABLE")
    assert e.body("26.9").startswith(b"Code: 60. DB::Exception: Unknown table")


@pytest.mark.parametrize("enc", ["lz4", "zstd", "gzip", "deflate"])
def test_a_compression_bomb_stops_at_the_limit(enc: str) -> None:
    import gzip as gz
    import zlib as zl

    import lz4.frame
    import zstandard

    data = b"x" * 3_000_000
    packed = {
        "lz4": lambda: lz4.frame.compress(data[:1_500_000]) + lz4.frame.compress(data[1_500_000:]),
        "zstd": lambda: zstandard.ZstdCompressor().compress(data),
        "gzip": lambda: gz.compress(data),
        "deflate": lambda: zl.compress(data),
    }[enc]()
    assert len(packed) < 20_000
    assert decompress_body(packed, enc, limit=3_000_000) == data  # every frame, up to the limit
    with pytest.raises(ClickHouseError) as exc:
        decompress_body(packed, enc, limit=1_000_000)
    assert exc.value.code == 307
