"""``argus stack up | down | status``: the local default stack.

- Apache Kafka 4.4 in KRaft mode from Maven Central (:mod:`services.stack.kafka_local`).
- The ClickHouse engine behind the ClickHouse HTTP interface
  (:mod:`services.stack.clickhouse_http`) on ``127.0.0.1:8123``.
- Every registry topic created, every ClickHouse migration applied.

``up`` is idempotent (what runs is left running), ``down`` stops by pid what ``up``
started, ``status`` checks each component for real (a metadata request to the broker,
``/ping`` and a query to ClickHouse).
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.common.clickhouse_access import ADMIN
from services.common.settings import ClickHouseSettings, KafkaSettings, StackSettings
from services.common.subject_keys import KeyServiceRef
from services.stack.credentials import clickhouse_users_file
from services.stack.kafka_local import KafkaCluster, KafkaLocal, _port_open
from services.stack.process import ManagedProcess, StackError


@dataclass
class ComponentStatus:
    name: str
    healthy: bool
    pid: int | None
    address: str
    detail: str
    extra: dict[str, str] = field(default_factory=dict)


def _wait_until_up(process: ManagedProcess, pid: int, ping, timeout_s: float, what: str, probe: str) -> int:  # noqa: ANN001
    """``pid`` once ``ping()`` answers; a process that exits meanwhile, or never answers, is an error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise StackError(f"{what} exited during start-up:\n{process.tail()}")
        if ping():
            return pid
        time.sleep(0.1)
    raise StackError(f"{what} did not answer {probe} within {timeout_s:.0f}s")


class ClickHouseLocal:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.root = Path(settings.home).resolve() / "clickhouse"
        self.process = ManagedProcess("clickhouse", self.root / "clickhouse.pid", self.root / "clickhouse.out")

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.clickhouse_https else "http"
        return f"{scheme}://{self.settings.host}:{self.settings.clickhouse_port}"

    def start(self, timeout_s: float = 60.0) -> int:
        if self.process.alive():
            return self.process.pid() or 0
        if _port_open(self.settings.host, self.settings.clickhouse_port):
            raise StackError(
                f"port {self.settings.host}:{self.settings.clickhouse_port} is taken by another process; "
                "set ARGUS_STACK_CLICKHOUSE_PORT"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        users_file = clickhouse_users_file(Path(self.settings.home), (self.settings.clickhouse_database,))
        cmd = [
            sys.executable,
            "-m",
            "services.stack.clickhouse_http",
            "--data-dir",
            str(self.root / "data"),
            "--users-file",
            str(users_file),
            "--host",
            self.settings.host,
            "--port",
            str(self.settings.clickhouse_port),
        ]
        from services.stack.tls import ensure_ca

        cmd += ["--trust-ca", str(ensure_ca(Path(self.settings.home)))]  # the key service's certificate
        if self.settings.clickhouse_https:  # a certificate from the stack's CA, as the broker's
            from services.stack.tls import ensure_ca, ensure_cert

            home = Path(self.settings.home)
            ensure_ca(home)
            hosts = sorted({self.settings.host, "127.0.0.1", "localhost"})
            cmd += ["--tls-cert", str(ensure_cert(home, "clickhouse", hosts))]
        repo = Path(__file__).resolve().parents[2]
        pid = self.process.spawn(cmd, cwd=repo, env={"ARGUS_STACK_HOME": str(Path(self.settings.home).resolve())})
        return _wait_until_up(self.process, pid, self.ping, timeout_s, "the ClickHouse endpoint", "/ping")

    def ping(self) -> bool:
        ctx = None
        if self.settings.clickhouse_https:
            import ssl

            ctx = ssl.create_default_context(cafile=str(Path(self.settings.home).resolve() / "tls" / "ca.pem"))
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2, context=ctx) as r:
                return r.read().strip() == b"Ok."
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> bool:
        return self.process.stop(30.0)


class KeyServiceLocal:
    """The subject key service (crypto-shredding) on loopback, over HTTPS with a
    certificate from the stack's CA (``<home>/tls/keys.pem``; ClickHouse and ``argus
    privacy`` check it against ``<home>/tls/ca.pem``): its store in ``<home>/keys/``, its
    master key and two tokens in ``<home>/secrets/privacy/``."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.home = Path(settings.home).resolve()
        self.root = self.home / "keys"
        self.process = ManagedProcess("keys", self.root / "keys.pid", self.root / "keys.out")

    @property
    def url(self) -> str:
        return f"https://{self.settings.host}:{self.settings.keys_port}"

    @property
    def ca_file(self) -> Path:
        return self.home / "tls" / "ca.pem"

    def env(self) -> dict[str, str]:
        from services.stack.credentials import secret
        from services.stack.tls import ensure_ca, ensure_cert

        secrets_dir = self.home / "secrets" / "privacy"
        for name in ("master-key", "dictionary-token", "admin-token"):
            secret(self.home, f"privacy/{name}")  # generated once, 0600
        ensure_ca(self.home)
        cert = ensure_cert(self.home, "keys", sorted({self.settings.host, "127.0.0.1", "localhost"}))
        return {
            "ARGUS_KEYS_TLS_CERT_FILE": str(cert),
            "ARGUS_KEYS_HOST": self.settings.host,
            "ARGUS_KEYS_PORT": str(self.settings.keys_port),
            "ARGUS_KEYS_STORE": str(self.root / "subject-keys.sqlite3"),
            "ARGUS_KEYS_MASTER_KEY_FILE": str(secrets_dir / "master-key"),
            "ARGUS_KEYS_DICTIONARY_TOKEN_FILE": str(secrets_dir / "dictionary-token"),
            "ARGUS_KEYS_ADMIN_TOKEN_FILE": str(secrets_dir / "admin-token"),
        }

    def start(self, timeout_s: float = 30.0) -> int:
        if self.process.alive():
            return self.process.pid() or 0
        if _port_open(self.settings.host, self.settings.keys_port):
            raise StackError(
                f"port {self.settings.host}:{self.settings.keys_port} is taken by another process; "
                "set ARGUS_STACK_KEYS_PORT"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parents[2]
        pid = self.process.spawn([sys.executable, "-m", "services.keys"], cwd=repo, env=self.env())
        return _wait_until_up(self.process, pid, self.ping, timeout_s, "the key service", "/healthz")

    def ping(self) -> bool:
        import ssl

        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            with urllib.request.urlopen(self.url + "/healthz", timeout=2, context=ctx) as r:  # noqa: S310 - loopback
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> bool:
        return self.process.stop(15.0)


class Stack:
    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        s = self.settings
        common = dict(
            home=Path(s.home),
            host=s.host,
            port=s.kafka_port,
            controller_port=s.kafka_controller_port,
            heap=s.kafka_heap,
            version=s.kafka_version,
            java=s.java,
            maven=s.maven,
            libs_dir=s.kafka_libs,
            secure=kafka_secure(s),
        )
        brokers = kafka_brokers(s)
        self.kafka: KafkaLocal | KafkaCluster = (
            KafkaLocal(**common) if brokers == 1 else KafkaCluster(size=brokers, **common)
        )
        self.clickhouse = ClickHouseLocal(s)
        self.keys = KeyServiceLocal(s)

    @property
    def kafka_settings(self) -> KafkaSettings:
        """The stack's own (the super user ``argus-admin``): topics, ACLs, demo traffic."""
        return self.kafka.client_settings()

    def kafka_settings_for(self, principal: str) -> KafkaSettings:
        return self.kafka.client_settings(principal)

    @property
    def clickhouse_settings(self) -> ClickHouseSettings:
        """The admin's: migrations and status. Services and people get their own users."""
        return ClickHouseSettings(dsn=self.settings.clickhouse_dsn(ADMIN))

    def clickhouse_settings_for(self, user: str) -> ClickHouseSettings:
        return ClickHouseSettings(dsn=self.settings.clickhouse_dsn(user))

    def up(self, progress=print) -> dict[str, object]:  # noqa: ANN001 - a print-like callable
        from services.common import migrations
        from services.common.clickhouse import get_client
        from services.common.kafka import ensure_topics

        Path(self.settings.home).mkdir(parents=True, exist_ok=True)
        if self.kafka.secure == self.settings.kafka_insecure:  # the data says one mode, the request the other
            made = "a secure (SASL_SSL)" if self.kafka.secure else "an INSECURE plaintext"
            asked = "--insecure" if self.settings.kafka_insecure else "a secure stack (the default)"
            raise StackError(
                f"the Kafka data in {self.kafka.data} belongs to {made} broker, and you asked for {asked}: "
                "pass the matching flag, or run `argus stack down`, delete that directory (its topics are lost) "
                "and `argus stack up` again"
            )
        if self.kafka.fetch():
            progress(f"fetched Apache Kafka {self.settings.kafka_version} from Maven Central into {self.kafka.libs}")
        kafka_pid = self.kafka.start(self.settings.start_timeout_s)
        progress(f"kafka      pid {kafka_pid}  {self.kafka.bootstrap}")
        keys_pid = self.keys.start()
        progress(f"keys       pid {keys_pid}  {self.keys.url} (subject keys for crypto-shredding)")
        ch_pid = self.clickhouse.start(self.settings.start_timeout_s)
        progress(f"clickhouse pid {ch_pid}  {self.clickhouse.url}")
        if self.kafka.secure:
            from services.common import kafka_acl
            from services.stack.credentials import secret

            principals = kafka_acl.load_principals()
            home = Path(self.settings.home)
            kafka_acl.upsert_users(
                self.kafka_settings, {p: secret(home, f"kafka/{p}").get_secret_value() for p in principals}
            )
            n = kafka_acl.apply(self.kafka_settings, kafka_acl.plan())
            progress(
                f"security   SASL_SSL (SCRAM-SHA-512, CA {self.kafka.tls / 'ca.pem'}), {len(principals)} principals, {n} ACLs"
            )
        else:
            progress("security   [bold red]INSECURE[/]: plaintext Kafka, no authentication, no ACLs (--insecure)")
        from services.common.governance import ensure_identity, local_dir

        kid = ensure_identity(local_dir(self.settings), "argus-retraining", ["service"])
        progress(f"governance the retraining service signs with key {kid} ({local_dir(self.settings) / 'trust.yaml'})")
        created = asyncio.run(ensure_topics(self.kafka_settings))
        progress(f"topics     {len(created)} created" + (f": {', '.join(created)}" if created else " (all exist)"))
        client = get_client(self.clickhouse_settings, database="default")
        try:
            applied = migrations.apply(
                client, self.settings.clickhouse_database, keys=KeyServiceRef.local(self.settings)
            )
        finally:
            client.close()
        progress(f"migrations {len(applied)} applied" + (f": {', '.join(applied)}" if applied else " (up to date)"))
        return {"kafka_pid": kafka_pid, "clickhouse_pid": ch_pid, "topics_created": created, "migrations": applied}

    def down(self, progress=print) -> list[str]:  # noqa: ANN001
        stopped = []
        if self.clickhouse.stop():
            stopped.append("clickhouse")
        if self.keys.stop():
            stopped.append("keys")
        if self.kafka.stop():
            stopped.append("kafka")
        progress("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return stopped

    def status(self) -> list[ComponentStatus]:
        out = [self._kafka_status(), self._keys_status(), self._clickhouse_status()]
        return out

    def _kafka_status(self) -> ComponentStatus:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        pid = self.kafka.process.pid() if self.kafka.process.alive() else None
        if pid is None:  # nothing to probe (and a stack never started has no CA to trust yet)
            return ComponentStatus("kafka", False, None, self.kafka.bootstrap, "not running (`argus stack up`)", {})

        from services.common.kafka import client_kwargs

        async def probe() -> tuple[bool, str, dict[str, str]]:
            admin = AIOKafkaAdminClient(**client_kwargs(self.kafka_settings), request_timeout_ms=3000)
            try:
                await admin.start()
                topics = await admin.list_topics()
                groups = await admin.list_consumer_groups()
                argus = [t for t in topics if t.startswith("argus.")]
                mode = "SASL_SSL + ACLs" if self.kafka.secure else "INSECURE plaintext"
                return (
                    True,
                    f"{mode}, {len(argus)} argus topics, {len(groups)} consumer groups",
                    {"topics": str(len(argus)), "security": mode},
                )
            except (KafkaError, OSError) as exc:
                return False, f"broker not reachable: {exc!r}", {}
            finally:
                await admin.close()

        healthy, detail, extra = asyncio.run(probe())
        return ComponentStatus("kafka", healthy, pid, self.kafka.bootstrap, detail, extra)

    def _keys_status(self) -> ComponentStatus:
        pid = self.keys.process.pid() if self.keys.process.alive() else None
        if not self.keys.ping():
            return ComponentStatus("keys", False, pid, self.keys.url, "no answer to /healthz")
        return ComponentStatus("keys", True, pid, self.keys.url, "subject key service (crypto-shredding)")

    def _clickhouse_status(self) -> ComponentStatus:
        from services.common.clickhouse import get_client

        pid = self.clickhouse.process.pid() if self.clickhouse.process.alive() else None
        if not self.clickhouse.ping():
            return ComponentStatus("clickhouse", False, pid, self.clickhouse.url, "no answer to /ping")
        try:
            client = get_client(self.clickhouse_settings, database="default")
            version = client.server_version
            db = self.settings.clickhouse_database
            rows = client.query(f"SELECT count() FROM system.tables WHERE database = '{db}'").result_rows
            client.close()
        except Exception as exc:  # status reports any failure rather than raising
            return ComponentStatus("clickhouse", False, pid, self.clickhouse.url, f"query failed: {exc}")
        return ComponentStatus(
            "clickhouse",
            True,
            pid,
            self.clickhouse.url,
            f"engine {version}, {rows[0][0]} tables in {db}",
            {"version": version},
        )


def kafka_secure(settings: StackSettings) -> bool:
    """SASL_SSL unless asked for plaintext; an existing broker keeps the mode its data was made in."""
    for node in ("kafka", "kafka-1"):
        marker = Path(settings.home).resolve() / node / "security"
        if marker.exists():
            return marker.read_text().strip() != "plaintext"
    return not settings.kafka_insecure


def kafka_brokers(settings: StackSettings) -> int:
    """How many brokers the local Kafka has: as its data was made (one node in
    ``<home>/kafka``, a cluster in ``<home>/kafka-1…``), else as asked; asking for
    another count than the data's is refused (`argus stack down`, delete the data)."""
    home = Path(settings.home).resolve()
    nodes = [d for d in home.glob("kafka-*") if (d / "server.properties").exists()]
    made = len(nodes) if any((d / "data" / "meta.properties").exists() for d in nodes) else 0
    if not made and (home / "kafka" / "data" / "meta.properties").exists():
        made = 1
    if made and settings.kafka_brokers not in (1, made):
        raise StackError(
            f"the local Kafka in {home} was made with {made} broker(s), not {settings.kafka_brokers}: "
            "run `argus stack down`, delete its data (its topics are lost) and `argus stack up` again"
        )
    return made or settings.kafka_brokers


def stack_from_env() -> Stack:
    return Stack(StackSettings())
