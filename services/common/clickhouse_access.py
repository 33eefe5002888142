"""Who may do what in ClickHouse: one declaration for production and the local stack.

Every client of ClickHouse holds its own user, granted exactly its job:

- ``argus_ingest``: INSERT into the tables it writes (and SELECT on them, to resume from
  the offsets it stored); nothing else.
- ``argus_retraining``: SELECT on the argus database (metrics, holdout sets); it writes
  through Kafka, never to ClickHouse; ``readonly=1``.
- ``argus_sre``: SELECT on the argus database for people and Grafana; ``readonly=1``,
  bounded queries.
- ``argus_admin``: migrations and the local stack itself; never handed to a service.

Production renders these as ``users.d`` files of the official server
(``deploy/clickhouse/users.d/``, :func:`users_xml`), where the server enforces them. The
local endpoint (``services.stack.clickhouse_http``) enforces the same grants itself,
with ClickHouse's own parser, because the in-process engine runs every query as one
built-in user. No role here can reach the file system, the network or programs: table
functions (``file``, ``url``, ``s3``, ``executable``, ...), ``INTO OUTFILE``/``FROM
INFILE`` and the ``file()`` function need grants none of them holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ADMIN = "argus_admin"

# the tables the ingest service writes (one per registry topic it stores)
INGEST_TABLES: tuple[str, ...] = (
    "alert_silences",
    "audit_log",
    "alerts",
    "dead_letters",
    "drift_events",
    "feedback",
    "inference_requests",
    "inference_responses",
    "model_registry",
    "retraining_triggers",
    "serving_state",
)

# system tables a client library needs to connect and describe tables; nothing that
# names users, grants, queries (with their text and parameters) or the file system
READABLE_SYSTEM_TABLES = frozenset(
    {
        "one",
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "settings",
        "functions",
        "formats",
        "data_type_families",
        "time_zones",
        "table_engines",
        "databases",
        "tables",
        "columns",
        "build_options",
    }
)

# table functions that read nothing outside the query itself
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "input",
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "values",
        "null",
        "generate_series",
        "generateSeries",
        "generateRandom",
    }
)

# ordinary functions that reach outside the database (files, the binary's internals)
DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "addresstoline",
        "addresstolinewithinlines",
        "addresstosymbol",
        "demangle",
        "getclienthttpheader",
        "__getscalar",
    }
)

# settings a non-admin client may send with a query (clickhouse-connect, Grafana, curl);
# anything else is refused, like a server's settings constraints would
CHANGEABLE_SETTINGS = frozenset(
    {
        "max_execution_time",
        "max_result_rows",
        "max_result_bytes",
        "result_overflow_mode",
        "max_block_size",
        "max_insert_block_size",
        "max_threads",
        "insert_deduplicate",
        "insert_deduplication_token",
        "async_insert",
        "wait_for_async_insert",
        "session_timezone",
        "join_use_nulls",
        "final",
        "use_query_cache",
        "readonly",
        "extremes",
        "totals_mode",
        "allow_experimental_analyzer",
        "enable_analyzer",
        "cast_string_to_dynamic_use_inference",
    }
)
CHANGEABLE_SETTING_PREFIXES = ("input_format_", "output_format_", "format_", "date_time_")


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    readonly: int = 1
    select: tuple[str, ...] = ()  # tables of the argus database; ("*",) for all of them
    insert: tuple[str, ...] = ()
    profile: dict[str, str] = field(default_factory=dict)
    text: bool = False  # may read the sealed texts (prompts, outputs, comments, dead letters)

    def may_select(self, table: str) -> bool:
        return "*" in self.select or table in self.select

    def may_insert(self, table: str) -> bool:
        return table in self.insert


_BOUNDED = {"max_execution_time": "120", "max_memory_usage": "8000000000"}

ROLES: dict[str, Role] = {
    "argus_ingest": Role(
        "argus_ingest",
        "the ingest service: writes every event table, reads them back only to resume from its stored offsets",
        readonly=0,
        select=INGEST_TABLES,
        insert=INGEST_TABLES,
        profile={"max_execution_time": "300"},
    ),
    "argus_retraining": Role(
        "argus_retraining",
        "the retraining service: reads metrics and holdout sets; writes through Kafka only",
        select=("*",),
        profile=dict(_BOUNDED),
        text=True,  # holdout sets are prompts and answers
    ),
    "argus_sre": Role(
        "argus_sre",
        "people and Grafana: read the argus database, bounded queries",
        select=("*",),
        profile={**_BOUNDED, "max_result_rows": "10000000", "result_overflow_mode": "break"},
        text=True,
    ),
    "argus_analyst": Role(
        "argus_analyst",
        "dashboards and analysts: read the argus database except the texts that can hold personal data",
        select=("*",),
        profile={**_BOUNDED, "max_result_rows": "10000000", "result_overflow_mode": "break"},
    ),
}

# which user each service connects as (services that never talk to ClickHouse get none)
SERVICE_USERS = {"ingest": "argus_ingest", "retraining": "argus_retraining"}


def grants(role: Role, database: str = "argus") -> list[str]:
    """The GRANT statements of ``role`` on ``database``, as a server's users.d holds them.
    Reading a sealed text calls ``dictGet`` on the key dictionary: only roles with text
    access hold that grant; the others also lose SELECT on the text columns. The writer
    needs the ensuring dictionary for its inserts' defaults. Nobody but the admin may
    read the dictionaries as tables (their DDL holds the key service's token)."""
    from services.common.subject_keys import ENSURE_DICTIONARY, READ_DICTIONARY, SEALED, sealed_columns, texts

    out = []
    if "*" in role.select:
        out.append(f"GRANT SELECT ON {database}.*")
        out += [f"REVOKE SELECT ON {database}.{d}" for d in (READ_DICTIONARY, ENSURE_DICTIONARY)]
    else:
        out += [f"GRANT SELECT ON {database}.{t}" for t in role.select]
    out += [f"GRANT INSERT ON {database}.{t}" for t in role.insert]
    if role.insert and any(t in SEALED for t in role.insert):
        out.append(f"GRANT dictGet ON {database}.{ENSURE_DICTIONARY}")
    if role.text:
        out.append(f"GRANT dictGet ON {database}.{READ_DICTIONARY}")
    elif "*" in role.select:
        for table in SEALED:
            names = [*texts(table), *sealed_columns(table)]
            out.append(f"REVOKE SELECT({', '.join(names)}) ON {database}.{table}")
    return out


def users_xml(role: Role, database: str = "argus") -> str:
    """The ``users.d`` file of a production server for ``role`` (rendered, committed under
    ``deploy/clickhouse/users.d/`` and checked by the tests). The password is a SHA-256
    digest from the server's environment: without it the server refuses to start."""
    env = f"CLICKHOUSE_{role.name.upper()}_PASSWORD_SHA256"
    profile = {"readonly": str(role.readonly), **role.profile}
    lines = [
        f"<!-- {role.name}: {role.description}.",
        "     Generated from services/common/clickhouse_access.py (`argus clickhouse-users`); do not edit.",
        f"     Password: its SHA-256 hex digest in {env} of the server's environment",
        "     ($(printf %s \"$PASSWORD\" | sha256sum | cut -d' ' -f1)); without it the server refuses to start. -->",
        "<clickhouse>",
        "    <profiles>",
        f"        <{role.name}>",
        *[f"            <{k}>{v}</{k}>" for k, v in profile.items()],
        f"        </{role.name}>",
        "    </profiles>",
        "    <users>",
        f"        <{role.name}>",
        f'            <password_sha256_hex from_env="{env}"/>',
        f"            <profile>{role.name}</profile>",
        "            <quota>default</quota>",
        "            <networks><ip>::/0</ip></networks>",
        "            <grants>",
        *[f"                <query>{g}</query>" for g in grants(role, database)],
        "            </grants>",
        f"        </{role.name}>",
        "    </users>",
        "</clickhouse>",
        "",
    ]
    return "\n".join(lines)
