"""The alerting engine: rule evaluation and Alertmanager's notification semantics, as
pure state driven by signals and the clock (no I/O; the faust app feeds it, persists
what it marks dirty and delivers what it returns).

Per rule and label values a sliding window gives a value; the condition turns an alert
pending, then firing after ``for``, and resolved when it clears (after
``keep_firing_for``). Every state change is returned as an :class:`AlertChange` (to
publish on the alerts topic). Firing and resolved alerts are routed through the route
tree into aggregation groups; a group flushes ``group_wait`` after it is created and
then every ``group_interval``. At a flush, silenced and inhibited alerts are left out
and the notification log decides, as Alertmanager's dedup stage does, whether the
receiver must hear anything: new firing alerts, alerts that resolved, or nothing new
for ``repeat_interval``. A :class:`Notification` carries an idempotency key derived
from the group, the receiver, the alerts' states and the notification log's sequence,
so a retry (even after a restart) has the same key and a receiver can dedup.

State that must survive a restart (alerts, silences, notification log) is kept as JSON-
ready dicts and the keys changed since the last :meth:`AlertEngine.take_dirty` are
reported, so the app can write exactly those to its changelog-backed tables.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from services.alerting.config import AlertingConfig, Route, Rule
from services.alerting.windows import Signal, SlidingWindow
from services.common.labels import Matcher, fingerprint, format_labels, matches_all

ALERT_NAMESPACE = uuid.UUID("3d4a6c1e-8f20-4b9a-a7c5-2e1f0d9b8c7a")
SILENCE_RETENTION_S = 5 * 86400.0  # expired silences are kept this long (Alertmanager: 120h)
_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


@dataclass
class AlertState:
    fingerprint: str
    rule: str
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: str  # pending | firing | resolved
    active_at: float
    starts_at: float | None = None
    ends_at: float | None = None
    value: float | None = None
    last_true: float = 0.0
    muted: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "AlertState":
        return cls(**d)


@dataclass
class Silence:
    id: str
    matchers: list[str]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    updated_at: float = 0.0

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def parsed(self) -> tuple[Matcher, ...]:
        return tuple(Matcher.parse(m) for m in self.matchers)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AlertChange:
    """An alert state change, published as an Alert record."""

    alert: AlertState
    status: str  # pending | firing | resolved | suppressed
    at: float


@dataclass
class Notification:
    receiver: str
    group_key: str
    group_labels: dict[str, str]
    alerts: list[AlertState]
    firing: list[str]
    resolved: list[str]
    idempotency_key: str
    sequence: int
    created_at: float

    @property
    def status(self) -> str:
        return "firing" if self.firing else "resolved"


@dataclass
class _RouteNode:
    route: Route
    key: str
    receiver: str
    group_by: tuple[str, ...] | None  # None: group by all labels ("..." in Alertmanager)
    group_wait: float
    group_interval: float
    repeat_interval: float
    children: list["_RouteNode"] = field(default_factory=list)

    def match(self, labels: dict[str, str]) -> list["_RouteNode"]:
        if not matches_all(self.route.matchers, labels):
            return []
        found: list[_RouteNode] = []
        for child in self.children:
            hits = child.match(labels)
            found += hits
            if hits and not child.route.continue_:
                break
        return found or [self]


def _build_routes(route: Route, parent: _RouteNode | None, index: int) -> _RouteNode:
    matchers = "{" + ",".join(str(m) for m in route.matchers) + "}"
    key = matchers if parent is None else f"{parent.key}/{matchers}/{index}"

    def inherit(name: str, default: Any) -> Any:
        v = getattr(route, name)
        if v is not None:
            return v
        return getattr(parent, name) if parent is not None else default

    group_by = route.group_by if route.group_by is not None else (parent.group_by if parent else ())
    if group_by is not None and "..." in group_by:
        group_by = None
    node = _RouteNode(
        route=route,
        key=key,
        receiver=inherit("receiver", None),
        group_by=group_by,
        group_wait=inherit("group_wait", 30.0),
        group_interval=inherit("group_interval", 300.0),
        repeat_interval=inherit("repeat_interval", 4 * 3600.0),
    )
    node.children = [_build_routes(c, node, i) for i, c in enumerate(route.routes)]
    return node


@dataclass
class _Group:
    key: str
    node: _RouteNode
    labels: dict[str, str]
    fingerprints: set[str]
    next_flush: float
    inflight: bool = False


class AlertEngine:
    def __init__(self, config: AlertingConfig, now: float | None = None) -> None:
        self.config = config
        self.started_at = time.time() if now is None else now
        self.routes = _build_routes(config.route, None, 0)
        self.rules: dict[str, Rule] = {}
        self.windows: dict[tuple[str, tuple[str, ...]], SlidingWindow] = {}
        self.rules_by_source: dict[str, list[Rule]] = {}
        for rule in config.rules:
            rid = f"{rule.name}/{rule.severity}"
            self.rules[rid] = rule
            self.rules_by_source.setdefault(rule.source, []).append(rule)
        self.alerts: dict[str, AlertState] = {}
        self.silences: dict[str, Silence] = {}
        self.nflog: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, _Group] = {}
        self._dirty: dict[str, set[str]] = {"alerts": set(), "silences": set(), "nflog": set()}
        self._dirty_windows: set[tuple[str, tuple[str, ...]]] = set()
        self.inhibit = [
            (tuple(r.source_matchers), tuple(r.target_matchers), tuple(r.equal)) for r in config.inhibit_rules
        ]

    # -- state from the tables ------------------------------------------------------
    def restore(
        self, alerts: Iterable[dict], silences: Iterable[dict], nflog: Iterable[tuple[str, dict]], now: float
    ) -> None:
        """Load persisted state after a (re)start; groups are rebuilt with ``group_wait``."""
        for d in silences:
            s = Silence(**d)
            self.silences[s.id] = s
        for key, entry in nflog:
            self.nflog[key] = entry
        for d in alerts:
            a = AlertState.from_json(d)
            self.alerts[a.fingerprint] = a
            if a.state in ("firing", "resolved"):
                self._route(a, now)

    def take_dirty(self) -> dict[str, dict[str, Any | None]]:
        """Changed state since the last call: table -> key -> JSON value (None: delete)."""
        out: dict[str, dict[str, Any | None]] = {}
        out["alerts"] = {k: (self.alerts[k].to_json() if k in self.alerts else None) for k in self._dirty["alerts"]}
        out["silences"] = {
            k: (self.silences[k].to_json() if k in self.silences else None) for k in self._dirty["silences"]
        }
        out["nflog"] = {k: self.nflog.get(k) for k in self._dirty["nflog"]}
        for s in self._dirty.values():
            s.clear()
        return out

    # -- input ----------------------------------------------------------------------
    def observe(self, signal: Signal, now: float) -> None:
        for rule in self.rules_by_source.get(signal.source, ()):
            if rule.matchers and not matches_all(rule.matchers, signal.labels):
                continue
            key = (f"{rule.name}/{rule.severity}", tuple(signal.labels.get(b, "") for b in rule.by))
            w = self.windows.get(key)
            if w is None:
                w = self.windows[key] = SlidingWindow(rule.metric, rule.window, rule.min_events)
            w.add(now, signal.values)
            self._dirty_windows.add(key)

    def add_silence(self, silence: Silence, now: float) -> None:
        for m in silence.matchers:
            Matcher.parse(m)  # raises MatcherError: the caller dead-letters the record
        silence.updated_at = now
        self.silences[silence.id] = silence
        self._dirty["silences"].add(silence.id)

    def expire_silence(self, silence_id: str, now: float) -> bool:
        s = self.silences.get(silence_id)
        if s is None:
            return False
        s.ends_at = min(s.ends_at, now)
        s.updated_at = now
        self._dirty["silences"].add(silence_id)
        return True

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, now: float, everything: bool = False) -> list[AlertChange]:
        """Evaluate rules over the windows changed since the last call (every window
        with ``everything``, which the app does on its timer so time can pass)."""
        keys = list(self.windows) if everything else list(self._dirty_windows)
        self._dirty_windows.clear()
        changes: list[AlertChange] = []
        for key in keys:
            rid, values = key
            rule = self.rules[rid]
            value, _n = self.windows[key].metric(now)
            labels = {
                "alertname": rule.name,
                "severity": rule.severity,
                **rule.labels,
                **{b: v for b, v in zip(rule.by, values)},
            }
            fp = fingerprint(labels)
            if value is None:
                continue  # too little data for a verdict: keep the current state
            if not everything or now - self.started_at >= rule.window:
                changes += self._transition(rule, fp, labels, value, _OPS[rule.op](value, rule.threshold), now)
            elif _OPS[rule.op](value, rule.threshold):  # warming up after a start: only news of trouble
                changes += self._transition(rule, fp, labels, value, True, now)
        for key in [
            k
            for k, w in self.windows.items()
            if not w.samples
            and now - w.last_update > 2 * w.keep
            and fingerprint_for(self.rules[k[0]], k[1]) not in self.alerts
        ]:
            del self.windows[key]
        self._gc_silences(now)
        return changes

    def _transition(
        self, rule: Rule, fp: str, labels: dict[str, str], value: float, cond: bool, now: float
    ) -> list[AlertChange]:
        a = self.alerts.get(fp)
        if cond:
            if a is None or a.state == "resolved":
                a = AlertState(fp, rule.name, rule.severity, labels, {}, "pending", active_at=now, value=value)
                self.alerts[fp] = a
                a.annotations = {k: rule.render(t, labels, value) for k, t in rule.annotations.items()}
                self._dirty["alerts"].add(fp)
                if rule.for_ > 0:
                    a.last_true = now
                    return [AlertChange(a, "pending", now)]
            a.value, a.last_true = value, now
            if a.state == "pending" and now - a.active_at >= rule.for_:
                a.state, a.starts_at = "firing", now
                a.annotations = {k: rule.render(t, labels, value) for k, t in rule.annotations.items()}
                self._dirty["alerts"].add(fp)
                self._route(a, now)
                return [AlertChange(a, "firing", now)]
            return []
        if a is None or a.state == "resolved":
            return []
        if a.state == "pending":
            del self.alerts[fp]
            self._dirty["alerts"].add(fp)
            return []
        if now - a.last_true < rule.keep_firing_for:
            return []
        a.state, a.ends_at, a.value = "resolved", now, value
        self._dirty["alerts"].add(fp)
        return [AlertChange(a, "resolved", now)]

    # -- routing, grouping, muting --------------------------------------------------
    def _route(self, a: AlertState, now: float) -> None:
        for node in self.routes.match(a.labels):
            glabels = (
                dict(a.labels) if node.group_by is None else {k: a.labels[k] for k in node.group_by if k in a.labels}
            )
            gkey = f"{node.key}:{format_labels(glabels)}"
            g = self.groups.get(gkey)
            if g is None:
                g = self.groups[gkey] = _Group(gkey, node, glabels, set(), next_flush=now + node.group_wait)
            g.fingerprints.add(a.fingerprint)

    def silenced_by(self, labels: dict[str, str], now: float) -> list[str]:
        return [s.id for s in self.silences.values() if s.active(now) and matches_all(s.parsed(), labels)]

    def inhibited(self, a: AlertState) -> bool:
        for source_m, target_m, equal in self.inhibit:
            if not matches_all(target_m, a.labels):
                continue
            for src in self.alerts.values():
                if src.state != "firing" or src.fingerprint == a.fingerprint or not matches_all(source_m, src.labels):
                    continue
                if all(src.labels.get(e, "") == a.labels.get(e, "") for e in equal):
                    return True
        return False

    def muted(self, a: AlertState, now: float) -> bool:
        return bool(self.silenced_by(a.labels, now)) or (a.state == "firing" and self.inhibited(a))

    def next_due(self) -> float | None:
        due = [g.next_flush for g in self.groups.values() if not g.inflight]
        return min(due) if due else None

    def flush(self, now: float) -> tuple[list[Notification], list[AlertChange]]:
        """Groups whose time has come: the notifications their receivers need."""
        notes: list[Notification] = []
        changes: list[AlertChange] = []
        for g in list(self.groups.values()):
            if g.inflight or g.next_flush > now:
                continue
            g.next_flush = now + g.node.group_interval
            members = [self.alerts[fp] for fp in sorted(g.fingerprints) if fp in self.alerts]
            shown: list[AlertState] = []
            for a in members:
                mute = self.muted(a, now) if a.state == "firing" else False
                if mute != a.muted:
                    a.muted = mute
                    self._dirty["alerts"].add(a.fingerprint)
                    if mute:
                        changes.append(AlertChange(a, "suppressed", now))
                if not mute:
                    shown.append(a)
            if not shown:
                continue  # everything muted: nothing to say (a silence is not a resolution)
            firing = sorted(a.fingerprint for a in shown if a.state == "firing")
            resolved = sorted(a.fingerprint for a in shown if a.state == "resolved")
            nkey = f"{g.key}|{g.node.receiver}"
            entry = self.nflog.get(nkey)
            if self._needs_update(entry, set(firing), set(resolved), g.node.repeat_interval, now):
                seq = (entry or {}).get("seq", 0) + 1
                raw = f"{g.node.receiver}|{g.key}|{','.join(firing)}|{','.join(resolved)}|{seq}"
                notes.append(
                    Notification(
                        receiver=g.node.receiver,
                        group_key=g.key,
                        group_labels=g.labels,
                        alerts=[a for a in shown if a.state == "firing"] + [a for a in shown if a.state == "resolved"],
                        firing=firing,
                        resolved=resolved,
                        idempotency_key=hashlib.sha256(raw.encode()).hexdigest()[:32],
                        sequence=seq,
                        created_at=now,
                    )
                )
                g.inflight = True
            elif not firing and not [a for a in members if a.state == "firing"]:
                self._drop_resolved(g, members)
        return notes, changes

    @staticmethod
    def _needs_update(entry: dict | None, firing: set[str], resolved: set[str], repeat: float, now: float) -> bool:
        if entry is None:
            return bool(firing)
        notified_firing = set(entry["firing"])
        if not firing <= notified_firing:
            return True
        if not firing:
            return bool(notified_firing)
        if not resolved <= set(entry["resolved"]):
            return True
        return entry["at"] <= now - repeat

    def delivered(self, note: Notification, now: float) -> None:
        """The receiver acknowledged ``note``: log it, drop resolved alerts it carried."""
        nkey = f"{note.group_key}|{note.receiver}"
        self.nflog[nkey] = {"firing": note.firing, "resolved": note.resolved, "at": now, "seq": note.sequence}
        self._dirty["nflog"].add(nkey)
        g = self.groups.get(note.group_key)
        if g is not None:
            g.inflight = False
            members = [self.alerts[fp] for fp in sorted(g.fingerprints) if fp in self.alerts]
            self._drop_resolved(g, [a for a in members if a.fingerprint in note.resolved])

    def delivery_failed(self, note: Notification) -> None:
        """Gave up for now: the next flush of the group tries again (same key)."""
        g = self.groups.get(note.group_key)
        if g is not None:
            g.inflight = False

    def _drop_resolved(self, g: _Group, members: list[AlertState]) -> None:
        for a in members:
            if a.state != "resolved":
                continue
            g.fingerprints.discard(a.fingerprint)
            if not any(a.fingerprint in other.fingerprints for other in self.groups.values()):
                self.alerts.pop(a.fingerprint, None)
                self._dirty["alerts"].add(a.fingerprint)
        if not g.fingerprints:
            del self.groups[g.key]
            nkey = f"{g.key}|{g.node.receiver}"
            if nkey in self.nflog and not self.nflog[nkey]["firing"]:
                del self.nflog[nkey]
                self._dirty["nflog"].add(nkey)

    def _gc_silences(self, now: float) -> None:
        for sid in [k for k, s in self.silences.items() if s.ends_at < now - SILENCE_RETENTION_S]:
            del self.silences[sid]
            self._dirty["silences"].add(sid)

    # -- views ------------------------------------------------------------------------
    def active_alerts(self, now: float) -> list[dict[str, Any]]:
        out = []
        for a in sorted(self.alerts.values(), key=lambda x: (x.rule, x.fingerprint)):
            d = a.to_json()
            d["silenced_by"] = self.silenced_by(a.labels, now)
            d["inhibited"] = a.state == "firing" and self.inhibited(a)
            out.append(d)
        return out


def fingerprint_for(rule: Rule, values: tuple[str, ...]) -> str:
    return fingerprint({"alertname": rule.name, "severity": rule.severity, **rule.labels, **dict(zip(rule.by, values))})


def alert_event_id(fp: str, status: str, at: float, receiver: str | None = None) -> str:
    """Deterministic id of an Alert record, so a replay after a crash is deduplicated downstream."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{fp}|{status}|{int(at * 1000)}|{receiver or ''}"))
