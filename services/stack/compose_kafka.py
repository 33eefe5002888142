"""Kafka security material for ``docker-compose.yml``: the same broker as ``argus stack up``
(SASL_SSL with SCRAM-SHA-512, a controller listener with mutual TLS, the
StandardAuthorizer, no ACL but the super user's), for the official ``apache/kafka`` image.

``python -m services.stack.compose_kafka --out /out --host kafka`` (the compose service
``kafka-secrets``, once, as root) writes, each into its own directory so that compose
mounts every secret only where it is needed:

- ``broker/``: ``server.properties`` (with the admin's JAAS line), the broker's key and
  certificate chain, the CA, the cluster id, the admin's password and a client
  properties file for the healthcheck; owned by the image's user (uid 1000), 0600;
- ``ca/ca.pem``: the CA certificate every client trusts (0644), the broker's and the key
  service's;
- ``keys-tls/keys.pem``: the key service's key and certificate (for ``keys`` and
  ``localhost``), owned by the Argus image's user, 0600; ClickHouse checks it against
  the CA (``deploy/clickhouse/config.d/argus-keys-tls.xml``);
- ``<principal>/password``: one directory per principal of ``schemas/principals.yaml``
  plus ``argus-admin`` (owned by the Argus image's user, uid 10001, 0600).

Nothing is overwritten on a second run (the broker's data was formatted with these
credentials). The broker then formats its storage with ``--add-scram`` for the admin and
starts; ``argus-init`` creates the other principals and the ACLs with ``argus acl apply``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from services.common.kafka_acl import ADMIN_PRINCIPAL, load_principals
from services.stack.credentials import secret, write_private
from services.stack.kafka_local import KafkaLocal, new_cluster_id
from services.stack.tls import ensure_cert

BROKER_UID = 1000  # apache/kafka's appuser
ARGUS_UID = 10001  # deploy/docker/Dockerfile
BROKER_DIR = "/etc/kafka-argus"  # where compose mounts broker/ in the kafka container
KEYS_HOSTS = ["keys", "localhost"]  # the key service's names: on the compose network, and in its container
DATA_DIR = "/var/lib/kafka/data"


def broker_properties(host: str, broker_dir: str, data_dir: str, tls_home: Path, port: int = 9092) -> dict[str, str]:
    """The broker's configuration: :class:`KafkaLocal`'s, with the container's paths."""
    local = KafkaLocal(home=tls_home, host=host, port=port, controller_port=port + 1, secure=True)
    props = {}
    for line in local.write_config().read_text().splitlines():
        key, _, value = line.partition("=")
        props[key] = value
    tls = str(local.tls)
    for key, value in props.items():
        if value.startswith(tls):
            props[key] = broker_dir + value[len(tls) :]
    props["log.dirs"] = data_dir
    return props


def generate(
    out: Path, host: str, broker_dir: str = BROKER_DIR, data_dir: str = DATA_DIR, chown: bool = True, port: int = 9092
) -> list[str]:
    """Write what is missing under ``out``; returns what it wrote."""
    wrote: list[str] = []
    work = out / ".work"  # the CA key stays here, readable by root only
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o700)
    broker = out / "broker"
    broker.mkdir(parents=True, exist_ok=True)
    if not (broker / "server.properties").exists():
        props = broker_properties(host, broker_dir, data_dir, work, port)
        local = KafkaLocal(home=work, host=host, secure=True)
        shutil.copyfile(local.tls / "ca.pem", broker / "ca.pem")
        write_private(broker / "argus-broker.pem", (local.tls / "argus-broker.pem").read_text())  # holds the key
        write_private(broker / "server.properties", "".join(f"{k}={v}\n" for k, v in props.items()))
        write_private(broker / "cluster-id", new_cluster_id() + "\n")
        admin = local.admin_password()
        write_private(broker / "admin-password", admin + "\n")
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_PRINCIPAL}" password="{admin}";'
        )
        write_private(
            broker / "admin-client.properties",
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
            f"sasl.jaas.config={jaas}\nssl.truststore.type=PEM\nssl.truststore.location={broker_dir}/ca.pem\n",
        )
        wrote.append("broker")
    ca = out / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    if not (ca / "ca.pem").exists():
        shutil.copyfile(broker / "ca.pem", ca / "ca.pem")
        os.chmod(ca / "ca.pem", 0o644)
        wrote.append("ca")
    keys_tls = out / "keys-tls" / "keys.pem"
    if not keys_tls.exists():
        keys_tls.parent.mkdir(parents=True, exist_ok=True)
        write_private(keys_tls, ensure_cert(work, "keys", KEYS_HOSTS).read_text())  # signed by the same CA
        wrote.append("keys-tls")
    for principal in [ADMIN_PRINCIPAL, *load_principals()]:
        target = out / principal / "password"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_private(target, secret(work, f"kafka/{principal}").get_secret_value() + "\n")
            wrote.append(principal)
    if chown:
        for path in broker.iterdir():
            os.chown(path, BROKER_UID, BROKER_UID)
            os.chmod(path, 0o644 if path.name == "ca.pem" else 0o600)
        os.chown(broker, BROKER_UID, BROKER_UID)
        os.chown(keys_tls.parent, ARGUS_UID, ARGUS_UID)
        os.chown(keys_tls, ARGUS_UID, ARGUS_UID)
        for principal in [ADMIN_PRINCIPAL, *load_principals()]:
            os.chown(out / principal, ARGUS_UID, ARGUS_UID)
            os.chown(out / principal / "password", ARGUS_UID, ARGUS_UID)
    return wrote


def broker_command(broker_dir: str = BROKER_DIR, bin_dir: str = "/opt/kafka/bin") -> str:
    """What the kafka container runs: format the storage once with the admin's SCRAM
    credential (its output, which lists salted keys, is discarded), then the broker."""
    return (
        f"set -e; {bin_dir}/kafka-storage.sh format --ignore-formatted"
        f' -t "$(cat {broker_dir}/cluster-id)" -c {broker_dir}/server.properties --standalone'
        f' --add-scram "SCRAM-SHA-512=[name={ADMIN_PRINCIPAL},password=$(cat {broker_dir}/admin-password)]"'
        f" > /dev/null; exec {bin_dir}/kafka-server-start.sh {broker_dir}/server.properties"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.stack.compose_kafka", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--host", default="kafka", help="The broker's name on the compose network (in its certificate).")
    ap.add_argument("--no-chown", action="store_true", help="Keep the files' owner (when not run as root).")
    args = ap.parse_args(argv)
    wrote = generate(args.out, args.host, chown=not args.no_chown)
    print("kafka security material: " + (", ".join(wrote) if wrote else "all present"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
