"""Apache Kafka (KRaft, single node: broker + controller) from Maven Central.

The jars of ``org.apache.kafka:kafka_2.13`` and a log4j2 binding are fetched once with
Maven (``deploy/kafka/pom.xml``) into ``<home>/kafka/libs``; storage is formatted with
``kafka.tools.StorageTool`` (what ``bin/kafka-storage.sh`` runs) and the broker is
``java -cp '<libs>/*' kafka.Kafka server.properties`` (what
``bin/kafka-server-start.sh`` runs). Listeners bind to loopback. Data lives under
``<home>/kafka/data`` and survives restarts.
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
    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
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
        """Format KRaft storage once (standalone controller). Returns True if it formatted."""
        if (self.data / "meta.properties").exists():
            return False
        config = self.write_config()
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        proc = subprocess.run(
            self._java_cmd("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config), "--standalone"),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise StackError(f"kafka-storage format failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
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

        async def probe() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
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
