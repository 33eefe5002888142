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
from dataclasses import dataclass, fields
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
    # one node of a cluster (:class:`KafkaCluster`): its id, and the static controller
    # quorum of every node ("1@host:port,2@host:port,…"); None: one node, standalone
    node_id: int = 1
    voters: str | None = None

    @property
    def tls(self) -> Path:
        return Path(self.home).resolve() / "tls"

    def admin_password(self) -> str:
        from services.stack.credentials import secret

        return secret(Path(self.home), f"kafka/{ADMIN_PRINCIPAL}").get_secret_value()

    def client_settings(
        self,
        user: str = ADMIN_PRINCIPAL,
        topic_prefix: str = "",
        client_id: str = "argus",
        bootstrap: str | None = None,
    ) -> Any:
        """:class:`KafkaSettings` for ``user`` on this broker (its password file from the
        stack); ``bootstrap``: every node of its cluster."""
        from services.common.settings import KafkaSettings
        from services.stack.credentials import secret

        replication = "single-broker" if self.voters is None else "registry"
        bootstrap = bootstrap or self.bootstrap
        if not self.secure:
            return KafkaSettings(
                bootstrap_servers=bootstrap, topic_prefix=topic_prefix, client_id=client_id, replication=replication
            )
        secret(Path(self.home), f"kafka/{user}")  # generated on first use
        return KafkaSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=topic_prefix,
            client_id=client_id,
            replication=replication,  # one broker: every topic 1 and 1
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password_file=Path(self.home).resolve() / "secrets" / "kafka" / user,
            ssl_cafile=self.tls / "ca.pem",
        )

    @property
    def root(self) -> Path:
        return Path(self.home).resolve() / ("kafka" if self.voters is None else f"kafka-{self.node_id}")

    @property
    def libs(self) -> Path:
        return Path(self.libs_dir).resolve() if self.libs_dir else Path(self.home).resolve() / "kafka" / "libs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        name = "kafka" if self.voters is None else f"kafka-{self.node_id}"
        return ManagedProcess(name, self.root / "kafka.pid", self.root / "kafka.out")

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
        # a cluster keeps its own state three times, and takes writes with one node down
        rf, isr = ("1", "1") if self.voters is None else ("3", "2")
        quorum = (
            {"controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}"}
            if self.voters is None
            else {"controller.quorum.voters": self.voters}
        )
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            **self._security_props(),
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
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

    def format(self, cluster_id: str | None = None) -> bool:
        """Format KRaft storage once (standalone controller, or a node of a static quorum
        with the cluster's id), seeding the admin's SCRAM credential when secure. Returns
        True if it formatted."""
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
        args = ["format", "-t", cluster_id or new_cluster_id(), "-c", str(config)]
        if self.voters is None:
            args.append("--standalone")
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
    def spawn(self, cluster_id: str | None = None) -> int:
        """Format (once) and start the process, without waiting for it."""
        if self.process.alive():
            return self.process.pid() or 0
        if _port_open(self.host, self.port):
            raise StackError(f"port {self.host}:{self.port} is taken by another process; set ARGUS_STACK_KAFKA_PORT")
        self.fetch()
        self.write_config()
        self.format(cluster_id)
        return self.process.spawn(self._java_cmd("kafka.Kafka", str(self.root / "server.properties")), cwd=self.root)

    def start(self, timeout_s: float = 90.0) -> int:
        """Start the broker unless it runs already; wait until it accepts connections."""
        if self.process.alive():
            return self.process.pid() or 0
        pid = self.spawn()
        self.wait_ready(timeout_s)
        return pid

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise StackError(
                    f"Kafka exited during start-up; see {self.process.log} and {self.root / 'server.log'}:\n{self.process.tail()}"
                )
            if _port_open(self.host, self.port) and self._broker_ready():
                return
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


@dataclass
class KafkaCluster:
    """Three (or ``size``) KRaft nodes on loopback, each broker and controller, a static
    quorum of all of them: `argus stack up --brokers 3`'s cluster and the broker-failure
    drill's (``python -m bench.run failover``). Internal topics get 3 copies and
    min.insync.replicas 2; clients get ``replication="registry"``."""

    home: Path
    size: int = 3
    host: str = "127.0.0.1"
    heap: str = "512m"
    libs_dir: Path | None = None
    secure: bool = True
    log_level: str = "WARN"
    # node i listens on port + 2i (clients) and controller_port + 2i; None: free ports
    port: int | None = None
    controller_port: int | None = None
    version: str = "4.4.0"
    java: str = "java"
    maven: str = "mvn"

    def __post_init__(self) -> None:
        if self.port is None or self.controller_port is None:
            ports = [(free_port(), free_port()) for _ in range(self.size)]
        else:
            ports = [(self.port + 2 * i, self.controller_port + 2 * i) for i in range(self.size)]
        voters = ",".join(f"{i + 1}@{self.host}:{c}" for i, (_, c) in enumerate(ports))
        mine = {f.name for f in fields(self)} - {"port", "controller_port"}
        shared = {f.name: getattr(self, f.name) for f in fields(KafkaLocal) if f.name in mine}
        self.nodes = [
            KafkaLocal(**shared, port=p, controller_port=c, node_id=i + 1, voters=voters)
            for i, (p, c) in enumerate(ports)
        ]

    # what the stack manager reads of its Kafka, one node or a cluster alike
    @property
    def process(self) -> ManagedProcess:
        return self.nodes[0].process

    @property
    def data(self) -> Path:
        return self.nodes[0].data

    @property
    def tls(self) -> Path:
        return self.nodes[0].tls

    @property
    def libs(self) -> Path:
        return self.nodes[0].libs

    def fetch(self) -> bool:
        return self.nodes[0].fetch()

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def client_settings(self, user: str = ADMIN_PRINCIPAL, topic_prefix: str = "", client_id: str = "argus") -> Any:
        return self.nodes[0].client_settings(user, topic_prefix, client_id, bootstrap=self.bootstrap)

    def start(self, timeout_s: float = 120.0) -> int:
        """Start every node not running (formatting new ones with one cluster id); wait
        until each answers. Returns node 1's pid."""
        import re

        ids = [
            m[1]
            for node in self.nodes
            if (node.data / "meta.properties").exists()
            for m in [re.search(r"^cluster\.id=(\S+)", (node.data / "meta.properties").read_text(), re.M)]
            if m
        ]
        cluster_id = ids[0] if ids else new_cluster_id()
        for node in self.nodes:  # a quorum forms only once a majority runs: spawn all, then wait
            node.spawn(cluster_id)
        for node in self.nodes:
            node.wait_ready(timeout_s)
        return self.nodes[0].process.pid() or 0

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (no shutdown, no flush): what a lost machine looks like."""
        import os
        import signal

        node = self.nodes[node_id - 1]
        pid = node.process.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while node.process.alive() and time.monotonic() < deadline:
                time.sleep(0.05)

    def restart(self, node_id: int, timeout_s: float = 120.0) -> None:
        node = self.nodes[node_id - 1]
        node.spawn()
        node.wait_ready(timeout_s)

    def controller_leader(self) -> int:
        """The node id of the active controller: the leader of the highest epoch any node
        has written to its KRaft quorum state (``__cluster_metadata-0/quorum-state``)."""
        import json

        best = (-1, 0)
        for node in self.nodes:
            path = node.data / "__cluster_metadata-0" / "quorum-state"
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if state.get("leaderId", -1) >= 0 and state.get("leaderEpoch", -1) > best[0]:
                best = (state["leaderEpoch"], state["leaderId"])
        if best[1] == 0:
            raise StackError("no node knows a controller leader yet")
        return best[1]

    def stop(self, timeout_s: float = 30.0) -> bool:
        return any([node.stop(timeout_s) for node in self.nodes])


def new_cluster_id() -> str:
    """A KRaft cluster id (base64url of a random UUID) that does not start with '-': the
    storage tool's argument parser would take such an id for an option (1 start in 64
    failed with a usage message before this)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _port_open(host: str, port: int) -> bool:
    """Something listens on ``host:port``. A connection to a free port of the ephemeral
    range on loopback can connect to itself (TCP simultaneous open, the kernel picking
    that very port as the source): that is nobody listening."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            return conn.getsockname() != conn.getpeername()
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
