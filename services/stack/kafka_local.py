"""Apache Kafka (KRaft, single node: broker + controller) from Maven Central.

The jars of ``org.apache.kafka:kafka_2.13`` and a log4j2 binding are fetched once with
Maven (``deploy/kafka/pom.xml``) into ``<home>/kafka/libs``; storage is formatted with
``kafka.tools.StorageTool`` (what ``bin/kafka-storage.sh`` runs) and the broker is
``java -cp '<libs>/*' kafka.Kafka server.properties`` (what
``bin/kafka-server-start.sh`` runs). Listeners bind to loopback. Data lives under
``<home>/kafka/data`` and survives restarts.

Secure by default: clients connect with SASL_SSL (SCRAM-SHA-512) only, to a certificate
of the stack's own CA (:mod:`services.stack.tls`); the controller listener takes only
the broker's own certificate (mutual TLS); the ``StandardAuthorizer`` refuses whatever
no ACL allows (``allow.everyone.if.no.acl.found=false``); the one super user is the
stack's ``argus-admin``, whose SCRAM credential is seeded when storage is formatted.
``secure=False`` (``argus stack up --insecure``) runs plaintext listeners instead.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.kafka_acl import ADMIN_PRINCIPAL
from services.stack.credentials import write_private
from services.stack.process import ManagedProcess, StackError

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.apache.name = org.apache.kafka
logger.apache.level = {level}
"""


@dataclass
class KafkaLocal:
    home: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    version: str = "4.4.0"
    java: str = "java"
    maven: str = "mvn"
    log_level: str = "WARN"
    libs_dir: Path | None = None  # shared jar cache; default <home>/kafka/libs
    secure: bool = True

    @property
    def tls(self) -> Path:
        return Path(self.home).resolve() / "tls"

    def admin_password(self) -> str:
        from services.stack.credentials import secret

        return secret(Path(self.home), f"kafka/{ADMIN_PRINCIPAL}").get_secret_value()

    def client_settings(self, user: str = ADMIN_PRINCIPAL, topic_prefix: str = "", client_id: str = "argus") -> Any:
        """:class:`KafkaSettings` for ``user`` on this broker (its password file from the stack)."""
        from services.common.settings import KafkaSettings
        from services.stack.credentials import secret

        if not self.secure:
            return KafkaSettings(
                bootstrap_servers=self.bootstrap,
                topic_prefix=topic_prefix,
                client_id=client_id,
                replication="single-broker",
            )
        secret(Path(self.home), f"kafka/{user}")  # generated on first use
        return KafkaSettings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=topic_prefix,
            client_id=client_id,
            replication="single-broker",  # one broker: every topic 1 and 1
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password_file=Path(self.home).resolve() / "secrets" / "kafka" / user,
            ssl_cafile=self.tls / "ca.pem",
        )

    @property
    def root(self) -> Path:
        return Path(self.home).resolve() / "kafka"

    @property
    def libs(self) -> Path:
        return Path(self.libs_dir).resolve() if self.libs_dir else self.root / "libs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("kafka", self.root / "kafka.pid", self.root / "kafka.out")

    # -- install -------------------------------------------------------------
    def check_tools(self) -> None:
        if shutil.which(self.java) is None:
            raise StackError(
                f"Java not found ({self.java!r}). The local Kafka broker needs Java 17+: "
                "install a JDK (e.g. `apt-get install openjdk-17-jre-headless`) or set ARGUS_STACK_JAVA."
            )
        if not self._jar().exists() and shutil.which(self.maven) is None:
            raise StackError(
                f"Maven not found ({self.maven!r}). It fetches Apache Kafka {self.version} from Maven Central once: "
                "install Maven (`apt-get install maven`) or set ARGUS_STACK_MAVEN."
            )

    def _jar(self) -> Path:
        return self.libs / f"kafka_2.13-{self.version}.jar"

    def fetch(self) -> bool:
        """Fetch the broker's jars with Maven unless they are already there. Returns True if fetched."""
        self.check_tools()
        if self._jar().exists():
            return False
        self.libs.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.maven,
            "-q",
            "-B",
            "-f",
            str(POM),
            f"-Dkafka.version={self.version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.libs}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not self._jar().exists():
            raise StackError(
                f"Maven could not fetch Kafka {self.version}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        return True

    # -- configure -------------------------------------------------------------
    def _security_props(self) -> dict[str, str]:
        from services.stack.tls import ensure_ca, ensure_cert

        if not self.secure:
            return {
                "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            }
        ca = ensure_ca(Path(self.home))
        cert = ensure_cert(Path(self.home), "argus-broker", sorted({self.host, "127.0.0.1", "localhost"}))
        password = self.admin_password().replace("\\", "\\\\").replace('"', '\\"')
        return {
            "listeners": f"SASL_SSL://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:SSL,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN_PRINCIPAL}" password="{password}";'
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(cert),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(ca),
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            # the controller listener takes only the broker's own certificate
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN_PRINCIPAL};User:CN=argus-broker",
        }

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            **self._security_props(),
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # topics come from the registry; a typo must fail instead of creating a topic
            "auto.create.topics.enable": "false",
            "log.retention.check.interval.ms": "60000",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        path = self.root / "server.properties"
        write_private(path, "".join(f"{k}={v}\n" for k, v in props.items()))  # holds the admin's password
        (self.root / "log4j2.properties").write_text(LOG4J2.format(log=self.root / "server.log", level=self.log_level))
        return path

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return [
            self.java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.root}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def format(self) -> bool:
        """Format KRaft storage once (standalone controller), seeding the admin's SCRAM
        credential when secure. Returns True if it formatted."""
        marker = self.root / "security"
        mode = "sasl_ssl" if self.secure else "plaintext"
        if (self.data / "meta.properties").exists():
            if (marker.read_text().strip() if marker.exists() else "plaintext") != mode:
                raise StackError(
                    f"the Kafka data in {self.data} was made for a {marker.read_text().strip() if marker.exists() else 'plaintext'} "
                    f"broker, not {mode}: run `argus stack down`, delete {self.data} (its topics are lost) and `argus stack up` again"
                )
            return False
        config = self.write_config()
        cluster_id = new_cluster_id()
        args = ["format", "-t", cluster_id, "-c", str(config), "--standalone"]
        if self.secure:
            args += ["--add-scram", f"SCRAM-SHA-512=[name={ADMIN_PRINCIPAL},password={self.admin_password()}]"]
        proc = subprocess.run(self._java_cmd("kafka.tools.StorageTool", *args), capture_output=True, text=True)
        if proc.returncode != 0:
            # its output lists the seeded credentials' salted keys: show the error only
            errors = [
                ln for ln in (proc.stdout + proc.stderr).splitlines() if "Scram" not in ln and "storedKey" not in ln
            ]
            raise StackError("kafka-storage format failed:\n" + "\n".join(errors[-30:]))
        marker.write_text(mode + "\n")
        return True

    # -- run --------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> int:
        """Start the broker unless it runs already; wait until it accepts connections."""
        if self.process.alive():
            return self.process.pid() or 0
        if _port_open(self.host, self.port):
            raise StackError(f"port {self.host}:{self.port} is taken by another process; set ARGUS_STACK_KAFKA_PORT")
        self.fetch()
        self.write_config()
        self.format()
        pid = self.process.spawn(self._java_cmd("kafka.Kafka", str(self.root / "server.properties")), cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise StackError(
                    f"Kafka exited during start-up; see {self.process.log} and {self.root / 'server.log'}:\n{self.process.tail()}"
                )
            if _port_open(self.host, self.port) and self._broker_ready():
                return pid
            time.sleep(0.3)
        raise StackError(f"Kafka did not become ready within {timeout_s:.0f}s; see {self.root / 'server.log'}")

    def _broker_ready(self) -> bool:
        """The broker answers a metadata request (not just an open port)."""
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        from services.common.kafka import client_kwargs

        async def probe() -> bool:
            admin = AIOKafkaAdminClient(**client_kwargs(self.client_settings()), request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.list_topics()
                return True
            except (KafkaError, OSError):
                return False
            finally:
                await admin.close()

        return asyncio.run(probe())

    def stop(self, timeout_s: float = 30.0) -> bool:
        return self.process.stop(timeout_s)


def new_cluster_id() -> str:
    """A KRaft cluster id (base64url of a random UUID) that does not start with '-': the
    storage tool's argument parser would take such an id for an option (1 start in 64
    failed with a usage message before this)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
