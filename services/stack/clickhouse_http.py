"""The ClickHouse HTTP interface in front of the ClickHouse engine (chdb).

The local stack has no ClickHouse server binary, but it has the current ClickHouse
engine (``chdb-core``). This process owns the data directory and speaks ClickHouse's
HTTP protocol on loopback, so services, ``clickhouse-connect``, ``curl`` and SREs use a
plain ``http://`` DSN exactly as against a production server. It implements the parts
of the protocol stock clients use and nothing a real server would not do:

- ``GET /ping`` and ``GET /`` answer ``Ok.``; ``GET /?query=`` runs read-only queries.
- ``POST /``: query in ``?query=`` and/or the body (concatenated, as ClickHouse does);
  for ``INSERT ... FORMAT X`` the rest of the body is the data, inserted as one statement
  (``FROM INFILE`` a spooled copy), so a write the engine refuses is an error here too.
- URL parameters: ``database``, ``default_format``, ``query_id``, ``session_id``,
  ``param_<name>`` (server-side query parameters), ``user``/``password``; every other
  parameter that is not a transport option is a ClickHouse setting for this query.
- Request bodies compressed with lz4 (every frame), zstd (every frame), gzip, deflate.
  Responses compressed when ``enable_http_compression=1`` and the client accepts it.
- Headers ``X-ClickHouse-Summary``, ``-Query-Id``, ``-Format``, ``-Timezone``,
  ``-Server-Display-Name``; errors as ClickHouse text with its code, a non-200 status and
  ``X-ClickHouse-Exception-Code``.
- Users from a users file (``--users-file``, written by ``argus stack up``): each with a
  SHA-256 password digest and a role of :mod:`services.common.clickhouse_access`. No
  request without credentials is served, and there is no ``default`` user. Every user
  but the admin is held to its role's grants (:mod:`services.stack.clickhouse_authz`):
  no table functions that reach files, URLs or programs, no DDL, only its tables.
- Browsers are refused: a request that carries an ``Origin`` (or ``Sec-Fetch-*``) header,
  or whose ``Host`` is not the address the endpoint is bound to (DNS rebinding), is
  answered 403 before anything else, so a web page cannot reach the engine.
- Bounded: request bodies (``--max-body-bytes``), decompressed bodies
  (``--max-decompressed-bytes``), sessions per user and in all. HTTP sessions keep
  ``SET`` state (admin only), and a session used concurrently is refused
  (``SESSION_IS_LOCKED``).
- The engine's outgoing TLS (the key dictionaries' HTTPS source): ``--trust-ca FILE``
  gives it the server configuration a production ClickHouse gets in ``config.d``
  (:func:`services.common.subject_keys.clickhouse_client_tls_config`): certificates
  checked against that CA, host name included.

Run: ``python -m services.stack.clickhouse_http --data-dir .argus/clickhouse/data
--users-file .argus/clickhouse/users.json --port 8123``
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import hmac
import json
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.frame
import zstandard

from services.stack.clickhouse_authz import AccessDenied, Grants, parse_ast

# URL parameters that steer the HTTP transport rather than the query engine.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "user",
        "password",
        "quota_key",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "http_zlib_compression_level",
        "client_protocol_version",
        "http_native_compression_disable_checksumming_on_decompress",
        "add_http_cors_header",
        "role",
        "http_response_buffer_size",
        "cancel_http_readonly_queries_on_client_close",
    }
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code:\s*(\d+)")
_LEADING = re.compile(rb"^(\s+|--[^\n]*\n|/\*.*?\*/)+", re.S)
_INSERT = re.compile(rb"^\s*INSERT\s", re.I)
_FORMAT_DATA = re.compile(rb"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)[ \t]*(\r?\n)?", re.I)
_SELECT = re.compile(r"\bSELECT\b", re.I)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.I)
_VALUES = re.compile(rb"\bVALUES\b", re.I)
_SETTINGS_KW = re.compile(r"\bSETTINGS\b", re.I)
_READ_ONLY_KINDS = re.compile(r"^\s*(SELECT|WITH|SHOW|DESC|DESCRIBE|EXISTS|EXPLAIN|CHECK)\b", re.I)

# ClickHouse's own mapping of error codes to HTTP statuses (HTTPHandler), for the codes
# a client meets in practice; everything else is 500.
_HTTP_STATUS = {
    516: 401,  # AUTHENTICATION_FAILED
    192: 401,  # UNKNOWN_USER
    164: 403,  # READONLY
    497: 403,  # ACCESS_DENIED
    62: 400,
    27: 400,
    6: 400,
    26: 400,
    38: 400,
    36: 400,
    43: 400,
    53: 400,
    70: 400,
    72: 400,
    115: 400,
    117: 400,
    33: 400,
    32: 400,
    41: 400,
    47: 400,
    69: 400,
    60: 404,
    81: 404,
    16: 404,
    46: 404,
    107: 404,  # UNKNOWN_TABLE/DATABASE/IDENTIFIER/FUNCTION, FILE_DOESNT_EXIST
    48: 501,  # NOT_IMPLEMENTED
    159: 504,  # TIMEOUT_EXCEEDED
}
_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "Pretty": "text/plain; charset=UTF-8",
    "PrettyCompact": "text/plain; charset=UTF-8",
}


class ClickHouseError(Exception):
    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message

    def body(self, version: str) -> bytes:
        return f"Code: {self.code}. DB::Exception: {self.message}. ({self.name}) (version {version})\n".encode()


@dataclass(frozen=True)
class User:
    name: str
    password_sha256: str  # hex digest; never the password itself
    grants: Grants | None  # None: the admin (migrations, the stack itself)
    default_database: str = "default"

    @property
    def readonly(self) -> bool:
        return self.grants is not None and self.grants.role.readonly > 0


def load_users(path: Path) -> dict[str, User]:
    """The users file (JSON, written by ``argus stack up`` with mode 0600)::

        {"databases": ["argus"], "default_database": "argus",
         "users": {"argus_admin": {"sha256": "<hex>", "role": "admin"},
                   "argus_sre": {"sha256": "<hex>", "role": "argus_sre"}, ...}}

    Refuses (ValueError) a file without users, a user without a digest, an unknown role."""
    from services.common.clickhouse_access import ROLES

    data = json.loads(Path(path).read_text())
    databases = tuple(data.get("databases") or ("argus",))
    default_db = data.get("default_database") or databases[0]
    users: dict[str, User] = {}
    for name, spec in (data.get("users") or {}).items():
        digest = str(spec.get("sha256") or "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"user {name!r} has no SHA-256 password digest: refusing to start")
        role = spec.get("role")
        if role == "admin":
            users[name] = User(name, digest, None, default_db)
        elif role in ROLES:
            users[name] = User(name, digest, Grants(ROLES[role], databases), default_db)
        else:
            raise ValueError(f"user {name!r} has an unknown role {role!r}")
    if not users:
        raise ValueError(f"{path} defines no users: refusing to start")
    return users


# -- request parsing (pure, unit-tested) ------------------------------------
DEFAULT_MAX_DECOMPRESSED = 1 << 30


class _TooLarge(ClickHouseError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            307, "TOO_MANY_BYTES", f"the decompressed request body is larger than the limit of {limit} bytes"
        )


def decompress_body(body: bytes, encoding: str | None, limit: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """Decode a request body by ``Content-Encoding``, never past ``limit`` bytes (a few KB
    of zstd can claim gigabytes). lz4, zstd and gzip bodies may hold several frames
    back to back (clickhouse-connect streams one lz4 frame per block): all are decoded."""
    enc = (encoding or "").strip().lower()
    if not enc or enc == "identity" or not body:
        return body
    out: list[bytes] = []
    total = 0

    def keep(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)
        if total > limit:
            raise _TooLarge(limit)
        out.append(chunk)

    step = 1 << 20
    if enc in ("gzip", "deflate"):
        rest = body
        while rest:
            d = zlib.decompressobj(31 if enc == "gzip" else 15)
            data = rest
            while not d.eof:
                chunk = d.decompress(data, step)
                keep(chunk)
                data = d.unconsumed_tail
                if not chunk and not data:
                    break
            if not d.eof:
                raise ClickHouseError(27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED", f"truncated {enc} request body")
            rest = d.unused_data if enc == "gzip" else b""
        return b"".join(out)
    if enc == "lz4":
        rest = body
        while rest:
            d = lz4.frame.LZ4FrameDecompressor()
            keep(d.decompress(rest, max_length=step))
            while not d.eof and not d.needs_input:
                keep(d.decompress(b"", max_length=step))
            if not d.eof:
                raise ClickHouseError(27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "truncated lz4 frame in request body")
            rest = d.unused_data
        return b"".join(out)
    if enc == "zstd":
        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
            while chunk := reader.read(step):
                keep(chunk)
        return b"".join(out)
    raise ClickHouseError(48, "NOT_IMPLEMENTED", f"Unknown HTTP Content-Encoding: {encoding}")


def compress_response(data: bytes, accept: str | None) -> tuple[bytes, str | None]:
    """Pick an encoding the client accepts, in ClickHouse's order of preference."""
    accepted = [a.split(";")[0].strip().lower() for a in (accept or "").split(",") if a.strip()]
    for enc in ("lz4", "zstd", "gzip", "deflate"):
        if enc in accepted:
            if enc == "lz4":
                return lz4.frame.compress(data), enc
            if enc == "zstd":
                return zstandard.ZstdCompressor().compress(data), enc
            if enc == "gzip":
                return gzip.compress(data, compresslevel=3), enc
            return zlib.compress(data, 3), enc
    return data, None


def strip_leading_comments(q: bytes) -> bytes:
    m = _LEADING.match(q)
    return q[m.end() :] if m else q


class _IncompleteBody(Exception):
    """The request body ended before the length it announced."""


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {limit} bytes")


@dataclass(frozen=True)
class ParsedQuery:
    sql: str  # for INSERT with data: the statement up to (not including) FORMAT
    insert_format: str | None  # set when ``data`` is the rows of an INSERT
    data: bytes


def split_query(url_query: str | None, body: bytes) -> ParsedQuery:
    """ClickHouse semantics: the query is ``?query=`` followed by the body. For an
    ``INSERT ... FORMAT X`` whatever follows the format name (and one line break) is
    the data; with the statement in ``?query=`` the body is exactly the data.
    ``INSERT ... VALUES (...)`` and every other statement run as they are."""
    if url_query is not None:
        head = strip_leading_comments(url_query.encode())
        m = _FORMAT_DATA.search(head) if _INSERT.match(head) else None
        if m and not _VALUES.search(head, 0, m.start()) and not head[m.end() :].strip():
            return ParsedQuery(head[: m.start()].decode().strip(), m.group(1).decode(), body)
        full = url_query.encode() + (b"\n" + body if body else b"")
    else:
        full = body
    head = strip_leading_comments(full)
    if _INSERT.match(head):
        m = _FORMAT_DATA.search(head)
        if m and not _VALUES.search(head, 0, m.start()):
            return ParsedQuery(head[: m.start()].decode().strip(), m.group(1).decode(), head[m.end() :])
    return ParsedQuery(sql=full.decode("utf-8").strip().rstrip(";").strip(), insert_format=None, data=b"")


def result_format(sql: str, default_format: str) -> str:
    m = _TRAILING_FORMAT.search(sql)
    return m.group(1) if m else default_format


def engine_error(exc: BaseException) -> ClickHouseError:
    text = str(exc)
    m = _CODE.search(text)
    code = int(m.group(1)) if m else 1001
    name_m = re.search(r"\(([A-Z_]+)\)\s*$", text.strip())
    name = name_m.group(1) if name_m else "STD_EXCEPTION"
    msg = re.sub(r"^.*?DB::Exception:\s*", "", text.strip(), flags=re.S)
    msg = re.sub(r"\s*\([A-Z_]+\)\s*$", "", msg).rstrip(".")
    return ClickHouseError(code, name, msg)


def summary(result: Any, result_bytes: int, elapsed_ns: int) -> dict[str, str]:
    """``X-ClickHouse-Summary`` from a chdb query or insert result."""

    def stat(name: str) -> int:
        v = getattr(result, name, 0)
        return int(v() if callable(v) else v)

    return {
        "read_rows": str(stat("rows_read")),
        "read_bytes": str(stat("bytes_read")),
        "written_rows": str(stat("rows_written")),
        "written_bytes": str(stat("bytes_written")),
        "total_rows_to_read": "0",
        "result_rows": str(stat("rows_read") if result_bytes else 0),
        "result_bytes": str(result_bytes),
        "elapsed_ns": str(elapsed_ns),
    }


# -- the engine --------------------------------------------------------------
class Engine:
    """Owns the chdb data directory; hands out per-request or per-session connections."""

    def __init__(
        self,
        data_dir: Path,
        users: dict[str, User],
        session_timeout_s: float = 60.0,
        max_sessions: int = 256,
        max_sessions_per_user: int = 32,
        trust_ca: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.users = users
        self._target = str(self.data_dir)
        if trust_ca is not None:  # the engine's own server configuration: its outgoing TLS
            from services.common.subject_keys import clickhouse_client_tls_config

            if not Path(trust_ca).is_file():
                raise ValueError(f"--trust-ca {trust_ca}: no such file")
            config = self.data_dir.parent / f"{self.data_dir.name}.config.xml"
            config.write_text(clickhouse_client_tls_config(Path(trust_ca)))
            self._target = f"file:{self.data_dir}?config-file={config}"
        self._root = chdb.connect(self._target)  # keeps the engine alive for the process
        for stale in (self.data_dir / ".http-inserts").glob("*"):  # spooled bodies of a process that died mid-insert
            stale.unlink(missing_ok=True)
        self.version = self._scalar("SELECT version()")
        self.timezone = self._scalar("SELECT timezone()")
        self.session_timeout_s = session_timeout_s
        self.max_sessions = max_sessions
        self.max_sessions_per_user = max_sessions_per_user
        self._sessions: dict[tuple[str, str], tuple[Any, threading.Lock, float]] = {}
        self._sessions_lock = threading.Lock()

    def _scalar(self, sql: str) -> str:
        return self._root.query(sql, "TabSeparated").bytes().decode().strip()

    def close(self) -> None:
        with self._sessions_lock:
            for conn, _, _ in self._sessions.values():
                conn.close()
            self._sessions.clear()
        self._root.close()

    def authenticate(self, name: str, password: str) -> User:
        user = self.users.get(name)
        given = hashlib.sha256(password.encode()).hexdigest()
        if user is None or not password or not hmac.compare_digest(user.password_sha256, given):
            raise ClickHouseError(
                516,
                "AUTHENTICATION_FAILED",
                f"{name}: Authentication failed: password is incorrect, or there is no user with such name",
            )
        return user

    def new_connection(self, user: User) -> Any:
        conn = chdb.connect(self._target)
        if user.readonly:
            conn.query("SET readonly = 1", "TabSeparated")
        return conn

    def authorize(self, conn: Any, user: User, sql: str, database: str, qparams: dict[str, str] | None) -> None:
        """Refuse what ``user``'s grants do not allow (the admin is not checked). The
        engine's parser proves the text is one statement and gives its tree."""
        if user.grants is None:
            return
        try:
            conn.query("SELECT formatQuery({q:String})", "TabSeparated", params={"q": _tsv_escape(sql)})
            tree = conn.query("EXPLAIN AST " + sql, "TabSeparatedRaw", params=qparams).bytes().decode()
        except (chdb.ChdbError, RuntimeError) as exc:
            raise engine_error(exc) from None
        try:
            user.grants.check(parse_ast(tree), database)
        except AccessDenied as exc:
            raise ClickHouseError(497, "ACCESS_DENIED", str(exc)) from None

    def session(self, user: User, session_id: str, timeout_s: float | None) -> tuple[Any, threading.Lock]:
        now = time.monotonic()
        with self._sessions_lock:
            for key, (conn, lock, expires) in list(self._sessions.items()):
                if expires < now and not lock.locked():
                    conn.close()
                    del self._sessions[key]
            key = (user.name, session_id)
            if key not in self._sessions:
                mine = sum(1 for (name, _) in self._sessions if name == user.name)
                if len(self._sessions) >= self.max_sessions or mine >= self.max_sessions_per_user:
                    raise ClickHouseError(
                        202, "TOO_MANY_SIMULTANEOUS_QUERIES", "too many open HTTP sessions; close or reuse one"
                    )
                self._sessions[key] = (self.new_connection(user), threading.Lock(), 0.0)
            conn, lock, _ = self._sessions[key]
            timeout = min(timeout_s or self.session_timeout_s, 3600.0)
            self._sessions[key] = (conn, lock, now + timeout)
            return conn, lock


def _tsv_escape(value: str) -> str:
    """A query parameter's value as ClickHouse reads it (TSV escaping)."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r").replace("\0", "\\0")
    )


# -- HTTP ---------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse"
    engine: Engine  # set on the subclass by serve()
    allowed_hosts: frozenset[str] = frozenset()  # Host header values this endpoint answers to
    max_body_bytes: int = 512 << 20
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # the TLS handshake in this request's thread, bounded
            self.request.settimeout(10.0)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # access logs would drown the stack log; errors are returned to clients

    # body reading: Content-Length or chunked transfer encoding. A body cut short (the
    # client died or the connection broke mid-request) is never executed: an INSERT of
    # the rows that did arrive would store part of a batch its sender never saw succeed.
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            total = 0
            while True:
                size_line = self.rfile.readline()
                if not size_line.endswith(b"\n"):
                    raise _IncompleteBody("the connection closed inside the chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline()
                        if trailer in (b"\r\n", b"\n"):
                            break
                        if not trailer:
                            raise _IncompleteBody("the connection closed before the end of the chunked body")
                    break
                total += size
                if total > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
                chunk = self.rfile.read(size)
                if len(chunk) != size or not self.rfile.readline().endswith(b"\n"):
                    raise _IncompleteBody(f"a chunk of {size} bytes arrived incomplete")
                chunks.append(chunk)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.max_body_bytes or length < 0:
            raise _BodyTooLarge(self.max_body_bytes)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise _IncompleteBody(f"{len(body)} of {length} bytes arrived")
        return body

    def _refuse_browsers(self) -> bool:
        """403 for anything a web page can send: a request with an ``Origin`` or
        ``Sec-Fetch-*`` header (browsers add them, ClickHouse clients do not), or one whose
        ``Host`` is not this endpoint's own address (a DNS-rebinding page). True when refused."""
        reason = None
        if self.headers.get("Origin") is not None or any(h.lower().startswith("sec-fetch-") for h in self.headers):
            reason = "requests from web browsers are not served"
        elif self.allowed_hosts and (self.headers.get("Host") or "").lower() not in self.allowed_hosts:
            reason = f"Host {self.headers.get('Host')!r} is not this server"
        if reason is None:
            return False
        self.close_connection = True
        self._send(
            403,
            f"Code: 497. DB::Exception: {reason}. (ACCESS_DENIED)\n".encode(),
            {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": "497"},
        )
        return True

    def do_GET(self) -> None:
        if self._refuse_browsers():
            return
        path = urlsplit(self.path).path
        if path in ("/ping",):
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        if path == "/" and "query" not in params:
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if path not in ("/", "/query"):
            self._send(
                404, b"There is no handle " + path.encode() + b"\n", {"Content-Type": "text/plain; charset=UTF-8"}
            )
            return
        self._execute(params, b"", http_readonly=True)

    def do_POST(self) -> None:
        if self._refuse_browsers():
            return
        parts = urlsplit(self.path)
        if parts.path not in ("/", "/query"):
            self.close_connection = True
            self._send(
                404, b"There is no handle " + parts.path.encode() + b"\n", {"Content-Type": "text/plain; charset=UTF-8"}
            )
            return
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            body = self._read_body()
        except _BodyTooLarge as exc:
            self.close_connection = True
            self._send(
                413,
                f"Code: 307. DB::Exception: {exc}. (TOO_MANY_BYTES)\n".encode(),
                {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": "307"},
            )
            return
        except (_IncompleteBody, ValueError, OSError) as exc:
            self.close_connection = True
            try:
                self._send(
                    400,
                    f"Code: 33. DB::Exception: Incomplete request body: {exc}. (CANNOT_READ_ALL_DATA)\n".encode(),
                    {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": "33"},
                )
            except OSError:
                pass  # nobody is listening any more
            return
        self._execute(params, body, http_readonly=False)

    def _credentials(self, params: dict[str, str]) -> tuple[str, str]:
        user = self.headers.get("X-ClickHouse-User")
        key = self.headers.get("X-ClickHouse-Key")
        auth = self.headers.get("Authorization", "")
        if user is None and auth.lower().startswith("basic "):
            try:
                user, _, key = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, key = None, None
        if user is None and "user" in params:
            user, key = params.get("user"), params.get("password", "")
        return user or "", key or ""

    def _execute(self, params: dict[str, str], raw_body: bytes, http_readonly: bool) -> None:
        engine = self.engine
        query_id = params.get("query_id") or str(uuid.uuid4())
        default_format = params.get("default_format", "TabSeparated")
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": engine.timezone,
            "X-ClickHouse-Server-Display-Name": "argus-local",
        }
        session_lock: threading.Lock | None = None
        conn = None
        owned = False
        started = time.perf_counter_ns()
        try:
            user = engine.authenticate(*self._credentials(params))
            body = decompress_body(raw_body, self.headers.get("Content-Encoding"), self.max_decompressed_bytes)
            parsed = split_query(params.get("query"), body)
            if not parsed.sql:
                raise ClickHouseError(62, "SYNTAX_ERROR", "Empty query")
            if http_readonly and (parsed.insert_format or not _READ_ONLY_KINDS.match(parsed.sql)):
                raise ClickHouseError(
                    164,
                    "READONLY",
                    "Cannot execute query in readonly mode. For queries over HTTP, method GET implies readonly. You should use method POST for modifying queries",
                )
            if "session_id" in params:
                timeout = float(params["session_timeout"]) if params.get("session_timeout") else None
                conn, session_lock = engine.session(user, params["session_id"], timeout)
                if not session_lock.acquire(blocking=False):
                    session_lock = None
                    raise ClickHouseError(
                        373, "SESSION_IS_LOCKED", f"Session {params['session_id']} is locked by a concurrent client"
                    )
            else:
                conn = engine.new_connection(user)
                owned = True
            settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
            database = params.get("database")
            if user.grants is not None:
                try:
                    user.grants.check_settings(list(settings))
                except AccessDenied as exc:
                    raise ClickHouseError(452, "SETTING_CONSTRAINT_VIOLATION", str(exc)) from None
                if database is not None and not user.grants.database_allowed(database):
                    raise ClickHouseError(
                        497, "ACCESS_DENIED", f"{user.name}: Not enough privileges on database {database}"
                    )
            applied = self._apply_settings(conn, settings)
            if database is not None:
                if not _IDENT.match(database):
                    raise ClickHouseError(81, "UNKNOWN_DATABASE", f"Database {database} does not exist")
                conn.query(f"USE {database}", "TabSeparated")
            qparams = {k[6:]: v for k, v in params.items() if k.startswith("param_")} or None
            checked = parsed.sql + (f" FORMAT {parsed.insert_format}" if parsed.insert_format else "")
            # unqualified names are checked against the database they will run in: without a
            # database parameter that is the engine's `default`, which no role is granted
            engine.authorize(conn, user, checked, database or "default", qparams)
            try:
                if parsed.insert_format:
                    fmt = parsed.insert_format
                    result = self._insert(conn, parsed, qparams)
                    payload = b""
                else:
                    fmt = result_format(parsed.sql, default_format)
                    result = conn.query(parsed.sql, default_format, params=qparams)
                    payload = result.bytes() or b""
            finally:
                if session_lock is not None and applied:
                    # settings from the URL apply to this request only, not the session
                    for name in applied:
                        conn.query(f"SET {name} = DEFAULT", "TabSeparated")
            elapsed = time.perf_counter_ns() - started
            headers["X-ClickHouse-Format"] = fmt
            headers["X-ClickHouse-Summary"] = json.dumps(summary(result, len(payload), elapsed), separators=(",", ":"))
            headers["Content-Type"] = _CONTENT_TYPES.get(fmt, "application/octet-stream")
            if params.get("enable_http_compression") == "1" and payload:
                payload, enc = compress_response(payload, self.headers.get("Accept-Encoding"))
                if enc:
                    headers["Content-Encoding"] = enc
            self._send(200, payload, headers)
        except ClickHouseError as exc:
            self._error(exc, headers)
        except (chdb.ChdbError, RuntimeError) as exc:
            self._error(engine_error(exc), headers)
        except (ValueError, OSError, zstandard.ZstdError, EOFError, UnicodeDecodeError) as exc:
            self._error(
                ClickHouseError(27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED", f"Cannot read request: {exc}"), headers
            )
        except Exception as exc:  # server boundary: answer with an error, never drop the connection
            print(
                json.dumps({"event": "clickhouse_http.internal_error", "error": repr(exc)}), file=sys.stderr, flush=True
            )
            self._error(ClickHouseError(1001, "STD_EXCEPTION", f"internal error: {exc!r}"), headers)
        finally:
            if session_lock is not None:
                session_lock.release()
            if owned and conn is not None:
                conn.close()

    def _apply_settings(self, conn: Any, settings: dict[str, str]) -> list[str]:
        applied = []
        for name, value in settings.items():
            if not _IDENT.match(name):
                raise ClickHouseError(
                    115,
                    "UNKNOWN_SETTING",
                    f"Setting {name} is neither a builtin setting nor started with the prefix 'custom_'",
                )
            literal = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
            conn.query(f"SET {name} = {literal}", "TabSeparated")
            applied.append(name)
        return applied

    def _insert(self, conn: Any, parsed: ParsedQuery, qparams: dict[str, str] | None) -> Any:
        sql = parsed.sql
        settings_clause = ""
        m = _SETTINGS_KW.search(sql)
        if m:  # INSERT INTO t (...) SETTINGS a=1 FORMAT X: settings go after the data source
            sql, settings_clause = sql[: m.start()].rstrip(), sql[m.start() :]
        if qparams or settings_clause:
            raise ClickHouseError(
                48,
                "NOT_IMPLEMENTED",
                "query parameters and SETTINGS inside INSERT with data are not supported by this endpoint; pass settings as URL parameters",
            )
        if _SELECT.search(sql):  # INSERT ... SELECT ... FROM input(): only the streaming path takes it
            return self._insert_streaming(conn, sql, parsed)
        # Not chdb's streaming inserter: it reports success when the write itself fails
        # (a violated CONSTRAINT, a failing materialized view: rows_written says N, none
        # are stored). FROM INFILE runs as one statement and raises what the server would.
        spool = self.engine.data_dir / ".http-inserts"
        spool.mkdir(exist_ok=True)
        path = spool / f"{uuid.uuid4().hex}.{parsed.insert_format}"
        try:
            path.write_bytes(parsed.data)
            literal = str(path).replace("\\", "\\\\").replace("'", "\\'")
            return conn.query(
                f"{sql} FROM INFILE '{literal}' COMPRESSION 'none' FORMAT {parsed.insert_format}", "TabSeparated"
            )
        finally:
            path.unlink(missing_ok=True)

    @staticmethod
    def _insert_streaming(conn: Any, sql: str, parsed: ParsedQuery) -> Any:
        inserter = conn.send_insert(sql, parsed.insert_format)
        try:
            view = memoryview(parsed.data)
            step = 8 << 20
            for i in range(0, len(view), step):
                inserter.append(bytes(view[i : i + step]))
        except BaseException:
            inserter.cancel()
            raise
        return inserter.finish()

    def _error(self, exc: ClickHouseError, headers: dict[str, str]) -> None:
        headers = {
            k: v
            for k, v in headers.items()
            if k in ("X-ClickHouse-Query-Id", "X-ClickHouse-Timezone", "X-ClickHouse-Server-Display-Name")
        }
        headers["X-ClickHouse-Exception-Code"] = str(exc.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        self._send(_HTTP_STATUS.get(exc.code, 500), exc.body(self.engine.version), headers)

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else None)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Keep-Alive", "timeout=10")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    tls: ssl.SSLContext | None = None  # HTTPS: each accepted socket wrapped, handshake in its thread

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ssl.SSLError, OSError)):
            return  # a client that does not trust us, or speaks plain HTTP to HTTPS: its problem
        super().handle_error(request, client_address)


def tls_context(cert_chain: Path) -> ssl.SSLContext:
    """Server side TLS 1.2+ with the key and certificate chain in one PEM file (as the stack's
    CA issues them: services/stack/tls.py)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_chain))
    return ctx


def serve(
    engine: Engine,
    host: str,
    port: int,
    allowed_hosts: list[str] | None = None,
    max_body_bytes: int = 512 << 20,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED,
    tls_cert: Path | None = None,
) -> Server:
    handler = type(
        "BoundHandler",
        (Handler,),
        {"engine": engine, "max_body_bytes": max_body_bytes, "max_decompressed_bytes": max_decompressed_bytes},
    )
    server = Server((host, port), handler)
    if tls_cert is not None:
        server.tls = tls_context(tls_cert)
    bound = server.server_address[1]
    names = {host, *(["localhost", "127.0.0.1", "[::1]"] if host in ("127.0.0.1", "localhost", "::1") else [])}
    hosts = {f"{n}:{bound}" for n in names} | {h.lower() for h in (allowed_hosts or [])}
    if bound == 80:
        hosts |= names
    handler.allowed_hosts = frozenset(h.lower() for h in hosts)
    return server


def spawn(  # noqa: ANN201
    data_dir: Path,
    port: int,
    users_file: Path,
    host: str = "127.0.0.1",
    timeout_s: float = 60.0,
    quiet: bool = True,
    extra_args: list[str] | None = None,
    ca_file: Path | None = None,
    trust_ca: Path | None = None,
):
    """Start this endpoint as its own process and wait until it answers ``/ping``
    (tests and benchmarks; ``argus stack up`` manages it by pid file instead). ``ca_file``:
    the CA of its own certificate (``--tls-cert`` in ``extra_args``), to ping it;
    ``trust_ca``: the CA of the key service it calls."""
    import subprocess
    import urllib.request

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.stack.clickhouse_http",
            "--data-dir",
            str(data_dir),
            "--users-file",
            str(users_file),
            "--host",
            host,
            "--port",
            str(port),
            *(["--trust-ca", str(trust_ca)] if trust_ca is not None else []),
            *(extra_args or []),
        ],
        cwd=repo,
        stdout=out,
        stderr=out,
    )
    deadline = time.monotonic() + timeout_s
    https = "--tls-cert" in (extra_args or [])
    ctx = ssl.create_default_context(cafile=str(ca_file)) if https and ca_file else None
    while True:
        try:
            with urllib.request.urlopen(
                f"{'https' if https else 'http'}://{host}:{port}/ping", timeout=1, context=ctx
            ) as r:
                if r.read().strip() == b"Ok.":
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the ClickHouse endpoint on port {port} did not start")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    from services.common.settings import StackSettings

    stack = StackSettings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=stack.home / "clickhouse" / "data")
    ap.add_argument("--users-file", type=Path, default=stack.home / "clickhouse" / "users.json")
    ap.add_argument("--host", default=stack.host)
    ap.add_argument("--port", type=int, default=stack.clickhouse_port)
    ap.add_argument("--allowed-host", action="append", default=[], help="another Host header value to answer to")
    ap.add_argument("--max-body-bytes", type=int, default=512 << 20)
    ap.add_argument("--max-decompressed-bytes", type=int, default=DEFAULT_MAX_DECOMPRESSED)
    ap.add_argument("--tls-cert", type=Path, help="Serve HTTPS with this PEM file (private key and certificate chain).")
    ap.add_argument(
        "--trust-ca",
        type=Path,
        help="The CA the engine checks HTTPS servers it calls against (the key service's); no system CAs.",
    )
    args = ap.parse_args(argv)
    try:
        users = load_users(args.users_file)
        engine = Engine(args.data_dir, users, trust_ca=args.trust_ca)
    except (OSError, ValueError) as exc:
        print(json.dumps({"event": "clickhouse_http.refused", "error": str(exc)}), file=sys.stderr, flush=True)
        return 2
    server = serve(
        engine,
        args.host,
        args.port,
        args.allowed_host,
        args.max_body_bytes,
        args.max_decompressed_bytes,
        args.tls_cert,
    )

    def _stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(
        json.dumps(
            {
                "event": "clickhouse_http.listening",
                "host": args.host,
                "port": server.server_address[1],
                "https": args.tls_cert is not None,
                "trust_ca": str(args.trust_ca) if args.trust_ca else None,
                "engine_version": engine.version,
                "data_dir": str(engine.data_dir),
                "users": sorted(users),
            }
        ),
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
