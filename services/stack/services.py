"""The platform's services as local processes on the local stack: started, tracked by a
registry under ``<stack home>/services/`` (pid file plus a JSON record with the health
port, consumer groups and log), stopped by pid, and checked for real.

``argus stack start [NAME...]`` / ``argus stack stop [NAME...]`` use it, ``argus demo``
starts every service through it (so ``argus stack down`` stops what a killed demo left
behind), and ``argus stack status`` reports, per service: the process, its ``/readyz``
answer, the lag of its consumer groups as the broker sees it, and its counters from
``/metrics``. A service that was stopped or died stays in the registry and shows red.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.common.clickhouse_access import SERVICE_USERS
from services.common.settings import StackSettings
from services.stack.kafka_local import _port_open, free_port
from services.stack.process import ManagedProcess, StackError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: tuple[str, ...]  # ``python -m ...`` arguments
    env_prefix: str  # the service's settings prefix; "" for the subscriber (its own variables)
    groups: tuple[str, ...] = ()  # consumer groups (prefixes: ingest runs one group per topic)
    clickhouse: bool = False
    health_path: str = "/readyz"
    summary: str = ""


SERVICES: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec(
            "inference",
            ("services.inference", "serve"),
            "ARGUS_INFERENCE_",
            ("argus-inference",),
            summary="Ray Serve + SmolLM2 (llama.cpp) + the Kafka bridge",
        ),
        ServiceSpec(
            "ingest",
            ("services.ingest",),
            "ARGUS_INGEST_",
            ("argus-ingest",),
            clickhouse=True,
            summary="every topic -> ClickHouse, PII-protected",
        ),
        ServiceSpec(
            "drift",
            ("services.drift",),
            "ARGUS_DRIFT_",
            ("argus-drift",),
            summary="online drift detection (faust, river)",
        ),
        ServiceSpec(
            "alerting",
            ("services.alerting",),
            "ARGUS_ALERTING_",
            ("argus-alerting",),
            summary="rules, grouping, silences, webhook delivery (faust)",
        ),
        ServiceSpec(
            "retraining",
            ("services.retraining",),
            "ARGUS_RETRAINING_",
            ("argus-retraining",),
            clickhouse=True,
            summary="evidence -> triggers -> approval -> dispatch",
        ),
        ServiceSpec(
            "subscriber",
            ("services.alerting.receiver",),
            "",
            (),
            health_path="/readyz",
            summary="a local alert webhook subscriber (JSON lines)",
        ),
    )
}

ORDER = ("ingest", "drift", "alerting", "retraining", "subscriber", "inference")


@dataclass
class ServiceStatus:
    name: str
    running: bool
    ready: bool
    pid: int | None
    health_url: str
    detail: str
    lag: int | None = None  # sum over the service's consumer groups, from the broker; None: unknown
    # (broker unreachable, or the group has committed nothing yet)
    lag_by_group: dict[str, int] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)  # from /metrics
    log: str = ""

    @property
    def healthy(self) -> bool:
        return self.running and self.ready


class LocalServices:
    """The registry of service processes for one local stack home."""

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        self.root = Path(self.settings.home).resolve() / "services"

    # -- registry --------------------------------------------------------------------
    def _process(self, name: str) -> ManagedProcess:
        return ManagedProcess(name, self.root / f"{name}.pid", self.root / f"{name}.log")

    def record(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / f"{name}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def registered(self) -> list[str]:
        return [n for n in ORDER if (self.root / f"{n}.json").exists()]

    def alive(self, name: str) -> bool:
        return self._process(name).alive()

    # -- start / stop ----------------------------------------------------------------
    def default_env(self, spec: ServiceSpec, health_port: int) -> dict[str, str]:
        s = self.settings
        from services.stack.credentials import secret

        secret(Path(self.settings.home), "ray/auth-token")  # Ray's token authentication: made once, 0600
        env = {
            "PYTHONUNBUFFERED": "1",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(Path(self.settings.home).resolve() / "secrets" / "ray" / "auth-token"),
            "ARGUS_FAUST_DATADIR": str(self.root / "faust"),
        }
        if spec.name == "subscriber":
            return env | {
                "ARGUS_RECEIVER_PORT": str(health_port),
                "ARGUS_RECEIVER_SECRET": self.webhook_secret(),
                "ARGUS_RECEIVER_OUTPUT": str(self.root / "subscriber.jsonl"),
            }
        p = spec.env_prefix
        # each service its own Kafka principal (password as a file path, never in the env)
        env |= stack_kafka(s, f"argus-{spec.name}").as_env(p)
        env |= {
            f"{p}HEALTH__PORT": str(health_port),
            f"{p}HEALTH__HOST": s.host,
        }
        if spec.clickhouse:  # each service its own least-privileged user; the others get no DSN
            env[f"{p}CLICKHOUSE__DSN"] = s.clickhouse_dsn(SERVICE_USERS[spec.name]).get_secret_value()
        if spec.name == "ingest":  # migrations (re)create the key dictionaries: the key service's URL and token
            secrets_dir = Path(s.home).resolve() / "secrets" / "privacy"
            env["ARGUS_PRIVACY_KEYS_URL"] = f"http://{s.host}:{s.keys_port}"
            env["ARGUS_PRIVACY_KEYS_DICTIONARY_TOKEN_FILE"] = str(secrets_dir / "dictionary-token")
        governance = Path(s.home).resolve() / "secrets" / "governance"  # as `argus stack up` made it
        if spec.name in ("retraining", "ingest"):  # both check trigger and registry records against it
            env["ARGUS_GOVERNANCE_TRUST_FILE"] = str(governance / "trust.yaml")
        if spec.name == "retraining":  # the only service that signs
            env["ARGUS_GOVERNANCE_SIGNING_KEY_FILE"] = str(governance / "keys" / "argus-retraining.pem")
            env[f"{p}ALLOW_UNSIGNED_POLICIES"] = "true"  # the shipped policies; production signs them
        if spec.name == "inference":
            env[f"{p}HTTP_PORT"] = str(free_port())
            # the local default serves the packaged (unsigned) SmolLM2; signed versions are still verified
            env[f"{p}ALLOW_UNSIGNED_MODELS"] = "true"
            env["ARGUS_GOVERNANCE_TRUST_FILE"] = str(governance / "trust.yaml")
            env[f"{p}HTTP_API_KEYS_FILE"] = str(s.api_keys_file())  # `argus keys create` writes it
        if spec.name == "alerting":
            from services.stack.credentials import secret

            secret(Path(s.home), "alerting/api-token")  # `argus alerts` reads the same file
            env[f"{p}API_TOKEN_FILE"] = str(Path(s.home).resolve() / "secrets" / "alerting" / "api-token")
            # the shipped config delivers to the local subscriber, signed with the secret named "local"
            env[f"{p}WEBHOOK_SECRETS"] = json.dumps({"local": self.webhook_secret()})
            # the shipped rules, unsigned on a laptop; production starts only with rules an operator signed
            env[f"{p}ALLOW_UNSIGNED_RULES"] = "true"
        return env

    def webhook_secret(self) -> str:
        """The local stack's webhook signing secret, shared by alerting and the local
        subscriber: generated once, kept in ``<home>/services/webhook.secret`` (0600)."""
        path = self.root / "webhook.secret"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def start(self, name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Start one service (no-op if it runs); returns its registry record."""
        if name not in SERVICES:
            raise StackError(f"unknown service {name!r}; one of: {', '.join(ORDER)}")
        spec = SERVICES[name]
        proc = self._process(name)
        if proc.alive() and (rec := self.record(name)):
            return rec
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(env or {})
        if name == "subscriber":  # where the shipped alerting config delivers
            port = int(env.get("ARGUS_RECEIVER_PORT") or 9096)
            if _port_open(self.settings.host, port):
                raise StackError(
                    f"port {port} (the local webhook subscriber) is taken; stop what uses it "
                    "or set ARGUS_RECEIVER_PORT and the alerting config's receiver URL"
                )
        else:
            given = env.get(f"{spec.env_prefix}HEALTH__PORT")
            port = int(given) if given else free_port()
        full_env = self.default_env(spec, port) | env
        cmd = [sys.executable, "-m", *spec.module]
        pid = proc.spawn(cmd, cwd=REPO, env=full_env)
        rec = {
            "name": name,
            "pid": pid,
            "health_url": f"http://{self.settings.host}:{port}{spec.health_path}",
            "metrics_url": f"http://{self.settings.host}:{port}/metrics" if spec.env_prefix else "",
            "groups": list(spec.groups),
            "log": str(proc.log),
            "cmd": cmd,
            "started_at": time.time(),
            "env": {k: v for k, v in env.items() if "SECRET" not in k and "PASSWORD" not in k},
        }
        (self.root / f"{name}.json").write_text(json.dumps(rec, indent=2))
        return rec

    def stop(self, name: str, forget: bool = False) -> bool:
        """SIGTERM (then SIGKILL) the service's process group. The record stays (status
        shows the service red) unless ``forget``."""
        stopped = self._process(name).stop(30.0, group=True)
        if forget:
            (self.root / f"{name}.json").unlink(missing_ok=True)
        elif (rec := self.record(name)) is not None:
            rec["stopped_at"] = time.time()
            (self.root / f"{name}.json").write_text(json.dumps(rec, indent=2))
        return stopped

    def stop_all(self, forget: bool = True) -> list[str]:
        return [n for n in reversed(self.registered()) if self.stop(n, forget=forget)]

    def wait_ready(self, names: list[str], timeout_s: float, on_wait: Any = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            pending = []
            for n in names:
                if not self.alive(n):
                    raise StackError(
                        f"{n} exited during start-up; its log ({self._process(n).log}) ends with:\n"
                        f"{self._process(n).tail(15)}"
                    )
                answer = _get_json((self.record(n) or {}).get("health_url", ""))
                if not (answer or {}).get("ready"):
                    pending.append(n)
            if not pending:
                return
            if on_wait is not None:
                on_wait(pending)
            if time.monotonic() > deadline:
                raise StackError(f"not ready after {timeout_s:.0f}s: {', '.join(pending)} (logs in {self.root})")
            time.sleep(1.0)

    # -- status ----------------------------------------------------------------------
    def status(self, names: list[str] | None = None) -> list[ServiceStatus]:
        names = names or self.registered()
        recs = {n: self.record(n) or {} for n in names}
        lag = _broker_lag(self.settings, sorted({g for r in recs.values() for g in r.get("groups", [])}))
        out = []
        for n, rec in recs.items():
            running = self.alive(n)
            pid = self._process(n).pid() if running else None
            answer = _get_json(rec.get("health_url", "")) if running else None
            if not running:
                detail = "stopped" if rec.get("stopped_at") else "exited (see its log)"
            elif answer is None:
                detail = "health endpoint not answering"
            else:
                detail = answer.get("detail") or ("ready" if answer.get("ready") else "not ready")
            by_group = {
                g: total
                for g, total in (lag or {}).items()
                if any(g == p or g.startswith(p + ".") for p in rec.get("groups", []))
            }
            out.append(
                ServiceStatus(
                    n,
                    running,
                    bool(answer and answer.get("ready")),
                    pid,
                    rec.get("health_url", ""),
                    detail,
                    sum(by_group.values()) if by_group else None,
                    by_group,
                    _counters(rec.get("metrics_url", "")) if running else {},
                    rec.get("log", ""),
                )
            )
        return out


def _get_json(url: str, timeout: float = 3.0) -> dict[str, Any] | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 from /readyz still carries the payload
        try:
            return json.loads(exc.read() or b"{}")
        except ValueError:
            return {}
    except (OSError, ValueError):
        return None


COUNTERS = {
    "argus_messages_consumed_total": "consumed",
    "argus_messages_produced_total": "produced",
    "argus_messages_dead_lettered_total": "dead_lettered",
    "argus_rows_inserted_total": "rows_inserted",
    "argus_drift_events_total": "drift_events",
    "argus_notifications_total": "notifications",
    "argus_retraining_transitions_total": "transitions",
    "argus_in_flight": "in_flight",
}


def _counters(url: str) -> dict[str, float]:
    """Sums of the catalogue's main counters from a service's ``/metrics``."""
    if not url:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in COUNTERS:
                out[COUNTERS[s.name]] = out.get(COUNTERS[s.name], 0.0) + s.value
    return out


def _broker_lag(settings: StackSettings, prefixes: list[str]) -> dict[str, int] | None:
    """group -> total lag, for every group matching one of ``prefixes``; None if the
    broker cannot be reached (lag is then shown as unknown, never as 0)."""
    if not prefixes:
        return {}
    from aiokafka.errors import KafkaError

    from services.common.kafka import group_lag

    try:
        lag = asyncio.run(asyncio.wait_for(group_lag(stack_kafka(settings), prefixes, prefix=True), 15))
    except (KafkaError, OSError, asyncio.TimeoutError):
        return None
    return {g: sum(t.values()) for g, t in lag.items()}


def stack_kafka(settings: StackSettings, principal: str = "argus-admin") -> Any:
    """KafkaSettings of ``principal`` on the local stack's broker."""
    from services.stack.manager import Stack

    return Stack(settings).kafka_settings_for(principal)


def as_dict(s: ServiceStatus) -> dict[str, Any]:
    return asdict(s) | {"healthy": s.healthy}
