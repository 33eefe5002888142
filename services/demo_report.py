"""The demo's report: what reached ClickHouse and the subscriber, checked, in the
terminal and as one self-contained HTML file (inline SVG plots).

Every figure comes from the stores a user would look at: ClickHouse (requests,
responses, drift events, alerts, retraining triggers, all written by the ingest
service) and the subscriber's JSON lines (what was delivered)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.table import Table

from services import report as r


class Demo(Protocol):
    """What the report reads of a demo run (:class:`services.demo.Demo`)."""

    client: Any
    run_id: str
    t_start: float
    t_load: float
    total: int
    dir: Path
    opts: Any
    webhooks: Any
    console: Any
    firing: Any


@dataclass
class Outcome:
    sent: int = 0
    logged: int = 0
    answered: int = 0
    drift_events: int = 0
    drift_after_start: int = 0
    alerts_delivered: int = 0
    triggers: int = 0
    report_path: Path | None = None
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


SRE_QUERIES = (
    (
        "p95 latency by model version, last hour",
        "SELECT model_version, count() AS requests, round(quantile(0.95)(latency_ms)) AS p95_ms FROM argus.inference_log "
        "WHERE served_at > now() - INTERVAL 1 HOUR GROUP BY model_version",
    ),
    (
        "drift events, newest first",
        "SELECT detected_at, feature, detector, status, round(statistic, 3) AS stat, severity FROM argus.drift_events FINAL "
        "ORDER BY detected_at DESC LIMIT 10",
    ),
    (
        "alert history",
        "SELECT emitted_at, rule, status, labels['feature'] AS feature FROM argus.alerts FINAL ORDER BY emitted_at DESC LIMIT 10",
    ),
    (
        "retraining triggers and their states",
        "SELECT trigger_id, sequence, state, policy, occurred_at FROM argus.retraining_triggers FINAL ORDER BY occurred_at, sequence",
    ),
    (
        "per-minute rollup by model and tenant",
        "SELECT minute, model, tenant, sum(requests) AS requests, round(quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(latency_ms_q)[3]) "
        "AS p95_ms FROM argus.inference_rollup_1m GROUP BY minute, model, tenant ORDER BY minute DESC LIMIT 10",
    ),
)


# the tenant of the API key the demo's HTTP calls use
HTTP_TENANT = "demo-http"
# HTTP-only traffic (issue 21): 50 calls of the HTTP tenant, 25 streamed, 10 of them the
# offensive probe, blocked by its policy: 20% blocked, so GuardrailBlockRate (10%, at
# least 20 answers) fires for that tenant from calls no Kafka producer made
HTTP_CALLS = 50
HTTP_OFFENSIVE_EVERY = 5


def _rows(demo: "Demo", sql: str, **params: Any) -> list[tuple]:
    return demo.client.query(sql, parameters={"r": demo.run_id, "t": int(demo.t_start * 1000), **params}).result_rows


def collect(demo: "Demo") -> dict[str, Any]:
    requests = _rows(
        demo,
        """
        SELECT toInt64(q.metadata['loadgen_seq']) AS seq, toUnixTimestamp64Milli(q.created_at), q.prompt_chars,
               q.metadata['loadgen_phase'], r.latency_ms, r.status, toUnixTimestamp64Milli(r.served_at), r.mean_logprob
        FROM argus.inference_requests AS q
        LEFT JOIN (SELECT request_id, any(latency_ms) AS latency_ms, any(status) AS status, any(served_at) AS served_at,
                          any(mean_logprob) AS mean_logprob
                   FROM argus.inference_responses WHERE NOT shadow GROUP BY request_id) AS r ON r.request_id = q.request_id
        WHERE q.metadata['loadgen_run'] = {r:String}
        ORDER BY seq""",
    )
    requests = list({row[0]: row for row in requests}.values())  # a redelivered request counts once
    drift = _rows(
        demo,
        """
        SELECT toUnixTimestamp64Milli(detected_at), feature, detector, statistic, threshold, severity, model_version,
               change_offset, toUInt64OrZero(detector_params['detected_at_position']), event_id, status
        FROM argus.drift_events FINAL WHERE detected_at >= fromUnixTimestamp64Milli({t:Int64}) ORDER BY detected_at""",
    )
    alerts = _rows(
        demo,
        """
        SELECT toUnixTimestamp64Milli(emitted_at), rule, status, labels, annotations['summary'], fingerprint
        FROM argus.alerts FINAL WHERE emitted_at >= fromUnixTimestamp64Milli({t:Int64}) ORDER BY emitted_at""",
    )
    triggers = _rows(
        demo,
        """
        SELECT toUnixTimestamp64Milli(occurred_at), toString(trigger_id), sequence, state, policy, reason,
               length(drift_event_ids), length(alert_event_ids), dataset_spec['rows']
        FROM argus.retraining_triggers FINAL WHERE startsWith(policy, {p:String})
        ORDER BY occurred_at, sequence""",
        p=f"demo-{demo.run_id}-",
    )
    probes = _rows(
        demo,
        """
        SELECT q.metadata['demo_probe'] AS probe, l.tenant, l.guard_action, l.finish_reason, l.output,
               arrayMap(x -> concat(JSONExtractString(x, 'rail'), ' ', JSONExtractString(x, 'action'), ' (',
                                    toString(round(JSONExtractFloat(x, 'score'), 3)), ')'),
                        arrayFilter(x -> JSONExtractBool(x, 'triggered'), JSONExtractArrayRaw(ifNull(l.guard_verdict, '{}'), 'rails'))),
               toString(l.request_id)
        FROM argus.inference_log AS l
        INNER JOIN argus.inference_requests AS q ON q.request_id = l.request_id
        WHERE q.metadata['demo_run'] = {r:String}
        ORDER BY probe""",
    )
    return {
        "requests": requests,
        "drift": drift,
        "alerts": alerts,
        "triggers": triggers,
        "webhooks": demo.webhooks(),
        "probes": [row for row in {row[0]: row for row in probes}.values() if row[1] != HTTP_TENANT],
        # every HTTP call, once each (by request id)
        "http": list({row[6]: row for row in probes if row[1] == HTTP_TENANT}.values()),
    }


def _drift_start(requests: list[tuple]) -> tuple[int | None, float | None]:
    first = next((row for row in requests if row[3] == "drift"), None)
    return (first[0], first[1] / 1000) if first else (None, None)


def build_report(demo: "Demo") -> "Outcome":

    con = demo.console
    d = collect(demo)
    reqs, t0 = d["requests"], demo.t_load
    drift_seq, drift_t = _drift_start(reqs)
    answered = [q for q in reqs if q[5] is not None]
    prompt_drift = [e for e in d["drift"] if e[6] == "*"]  # prompt features: stream model|*
    after = [e for e in d["drift"] if drift_t is not None and e[0] / 1000 >= drift_t]
    before = [e for e in prompt_drift if drift_t is not None and e[0] / 1000 < drift_t]
    delivered_firing = demo.firing()
    http = d["http"]
    streamed = sum(1 for p in http if p[0].endswith("-stream"))
    blocked = [p for p in http if p[0].startswith("http-block") and p[2] == "block" and p[3] == "content_filter"]
    http_alerts = [
        a
        for a in d["alerts"]
        if a[1] == "GuardrailBlockRate"
        and a[2] == "firing"
        and a[3].get("tenant") == HTTP_TENANT
        and a[3].get("demo_run") == demo.run_id
    ]
    out = Outcome(
        sent=demo.total,
        logged=len(reqs),
        answered=len(answered),
        drift_events=len(d["drift"]),
        drift_after_start=len(after),
        alerts_delivered=len(delivered_firing),
        triggers=len({t[1] for t in d["triggers"]}),
    )
    out.checks = {
        f"every request answered ({len(answered)}/{demo.total})": len(answered) == demo.total,
        f"every request in ClickHouse ({len(reqs)}/{demo.total})": len(reqs) == demo.total,
        f"drift detected after its start ({len(after)} events after, {len(before)} prompt-feature events before)": bool(
            after
        )
        and not before,
        f"drift alert delivered to the subscriber ({len(delivered_firing)} firing notifications)": bool(
            delivered_firing
        ),
        f"retraining trigger raised ({out.triggers})": out.triggers > 0,
        "offensive answer blocked for the guarded tenant (finish_reason content_filter)": any(
            p[0] == "block" and p[2] == "block" and p[3] == "content_filter" for p in d["probes"]
        ),
        "the same answer flagged, and delivered, for a tenant with the default policy": any(
            p[0] == "flag" and p[2] == "flag" and p[3] != "content_filter" for p in d["probes"]
        ),
        f"HTTP calls in ClickHouse with the API key's tenant ({len(http)}/{HTTP_CALLS}, {streamed} streamed)": len(http)
        == HTTP_CALLS
        and streamed == HTTP_CALLS // 2,
        f"offensive HTTP answers blocked, streamed or not ({len(blocked)}/{HTTP_CALLS // HTTP_OFFENSIVE_EVERY})": len(
            blocked
        )
        == HTTP_CALLS // HTTP_OFFENSIVE_EVERY,
        f"GuardrailBlockRate fired for tenant {HTTP_TENANT} from HTTP-only traffic": bool(http_alerts),
    }

    # -- terminal ---------------------------------------------------------------------
    phases = Table(title="requests by phase (from ClickHouse)")
    for col in ("phase", "requests", "answered ok", "mean prompt chars", "p50 latency ms", "p95 latency ms"):
        phases.add_column(col)
    stats = _phase_stats(reqs)
    for ph, s in stats.items():
        phases.add_row(ph, str(s["n"]), str(s["ok"]), f"{s['chars']:.0f}", f"{s['p50']:.0f}", f"{s['p95']:.0f}")
    con.print(phases)
    events = Table(title="drift events")
    for col in ("at (s)", "stream", "feature", "detector", "statistic", "threshold", "severity", "status"):
        events.add_column(col)
    for e in d["drift"]:
        events.add_row(
            f"{e[0] / 1000 - t0:.0f}",
            "prompts" if e[6] == "*" else e[6],
            e[1],
            e[2],
            f"{e[3]:.3g}",
            f"{e[4]:.3g}",
            e[5],
            e[10],
        )
    con.print(events)
    notes = Table(title="notifications at the subscriber")
    for col in ("at (s)", "status", "alerts"):
        notes.add_column(col)
    for w in d["webhooks"]:
        p = w["payload"]
        names = ", ".join(
            f"{a['labels'].get('alertname')}({a['labels'].get('feature', a['labels'].get('model', ''))})"
            for a in p.get("alerts", [])
        )
        notes.add_row(f"{w['received_at'] - t0:.0f}", p.get("status", "?"), names)
    con.print(notes)
    trig = Table(title="retraining triggers")
    for col in ("at (s)", "trigger", "seq", "state", "policy", "reason"):
        trig.add_column(col)
    for t in d["triggers"]:
        trig.add_row(f"{t[0] / 1000 - t0:.0f}", t[1][:8], str(t[2]), t[3], t[4], t[5][:60])
    con.print(trig)
    guard = Table(title="guard rails: the same offensive prompt from two tenants")
    for col in ("tenant", "verdict", "finish reason", "answer the producer got", "rails that triggered"):
        guard.add_column(col)
    for p in d["probes"]:
        guard.add_row(p[1], p[2] or "", p[3] or "", (p[4] or "")[:60], ", ".join(p[5]))
    con.print(guard)
    for name, ok in out.checks.items():
        con.print(f"{'[green]✓' if ok else '[red]✗'}[/] {name}", highlight=False)

    # -- HTML ----------------------------------------------------------------------------
    path = demo.opts.report or demo.dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_html(demo, d, stats, out, drift_seq, drift_t))
    out.report_path = path
    con.print(f"\nreport: [bold]{path}[/]", highlight=False)
    pending = sorted(
        {t[1] for t in d["triggers"] if t[3] == "awaiting_approval"}
        - {t[1] for t in d["triggers"] if t[3] not in ("proposed", "awaiting_approval")}
    )
    if pending:
        con.print(
            f"a human decides next: [bold]argus retrain approve {pending[0][:8]} --by you[/] (or reject)",
            highlight=False,
        )
    con.print("\nNext, as an SRE (docs/sre-queries.md has more):")
    for title, q in SRE_QUERIES:
        con.print(f'  # {title}\n  argus sql "{q}"', highlight=False, soft_wrap=True)
    return out


def _q(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def _phase_stats(reqs: list[tuple]) -> dict[str, dict[str, float]]:
    out = {}
    for ph in ("baseline", "drift"):
        rows = [q for q in reqs if q[3] == ph]
        lat = [q[4] for q in rows if q[4] is not None]
        out[ph] = {
            "n": len(rows),
            "ok": sum(1 for q in rows if q[5] == "ok"),
            "chars": sum(q[2] for q in rows) / max(len(rows), 1),
            "p50": _q(lat, 0.5),
            "p95": _q(lat, 0.95),
        }
    return out


def _html(
    demo: "Demo", d: dict[str, Any], stats: dict, out: "Outcome", drift_seq: int | None, drift_t: float | None
) -> str:
    t0 = demo.t_load
    reqs = d["requests"]
    markers = [r.Marker(drift_t - t0, "drift injected", "#d62728")] if drift_t else []
    lat = r.scatter(
        "Latency of every request (ms) over time",
        [
            r.Series(
                ph,
                [q[1] / 1000 - t0 for q in reqs if q[3] == ph and q[4] is not None],
                [q[4] for q in reqs if q[3] == ph and q[4] is not None],
                color,
            )
            for ph, color in (("baseline", r.PALETTE[0]), ("drift", r.PALETTE[3]))
        ],
        markers,
        xlabel="seconds since the load started",
        ylabel="latency ms",
    )

    # the drifting feature, per request in stream order, with the detector's change point
    feat_markers = [r.Marker(drift_seq, "drift injected", "#d62728")] if drift_seq is not None else []
    started = [e for e in d["drift"] if e[10] == "started"]  # an ended episode locates no change
    prompt_events = [e for e in started if e[6] == "*" and e[1] == "prompt_chars"] or [
        e for e in started if e[6] == "*"
    ]
    if prompt_events:
        e = prompt_events[0]
        detected_seq = max(
            (q[0] for q in reqs if q[1] <= e[0]), default=0
        )  # the last request produced before the alarm
        lag_events = max(int(e[8]) - int(e[7] or 0), 0)  # detector: alarm position - located change position
        feat_markers += [
            r.Marker(detected_seq, f"{e[2]} alarm on {e[1]}", "#2ca02c", "2,2"),
            r.Marker(max(detected_seq - lag_events, 0), f"change point estimated by {e[2]}", "#9467bd", "4,2"),
        ]
    feat = r.scatter(
        "The drifting feature: prompt length (chars) per request",
        [
            r.Series(ph, [q[0] for q in reqs if q[3] == ph], [q[2] for q in reqs if q[3] == ph], color)
            for ph, color in (("baseline", r.PALETTE[0]), ("drift", r.PALETTE[3]))
        ],
        feat_markers,
        xlabel="request number (order sent)",
        ylabel="prompt chars",
    )

    lanes = [
        r.Lane(
            "load",
            bars=[
                (0, (drift_t or t0) - t0, r.PALETTE[0], "baseline"),
                ((drift_t or t0) - t0, max(q[1] for q in reqs) / 1000 - t0 if reqs else 0, r.PALETTE[3], "drift"),
            ],
        )
    ]
    by_feature: dict[str, list] = {}
    for e in d["drift"]:
        by_feature.setdefault(f"drift: {e[1]}", []).append(
            (e[0] / 1000 - t0, r.PALETTE[2], f"{e[2]} {e[1]} statistic {e[3]:.3g}")
        )
    lanes += [r.Lane(k, points=v) for k, v in by_feature.items()]
    spans: dict[str, list] = {}
    for a in d["alerts"]:
        spans.setdefault(f"{a[1]} {a[3].get('feature', '')}".strip(), []).append(a)
    now = time.time() - t0
    for name, recs in spans.items():
        lane = r.Lane(name)
        start = None
        for a in recs:
            t = a[0] / 1000 - t0
            if a[2] == "firing" and start is None:
                start = t
            elif a[2] == "resolved" and start is not None:
                lane.bars.append((start, t, "#e67e22", "firing"))
                start = None
            lane.points.append((t, {"firing": "#c0392b", "resolved": "#2a7d2a"}.get(a[2], "#888"), f"{a[2]}: {a[4]}"))
        if start is not None:
            lane.bars.append((start, now, "#e67e22", "firing"))
        lanes.append(lane)
    lanes.append(
        r.Lane(
            "webhooks delivered",
            points=[
                (
                    w["received_at"] - t0,
                    "#34495e",
                    f"{w['payload'].get('status')}: "
                    + ", ".join(a["labels"].get("alertname", "") for a in w["payload"].get("alerts", [])),
                )
                for w in d["webhooks"]
            ],
        )
    )
    for tid in dict.fromkeys(t[1] for t in d["triggers"]):
        lanes.append(
            r.Lane(
                f"retraining {tid[:8]}",
                points=[
                    (t[0] / 1000 - t0, r.PALETTE[4], f"{t[3]} ({t[4]}): {t[5]}") for t in d["triggers"] if t[1] == tid
                ],
            )
        )
    xs = [0.0, now]
    tl = r.timeline(
        "Timeline: load, drift events, alerts, deliveries, retraining",
        lanes,
        min(xs),
        max(xs),
        markers,
        xlabel="seconds since the load started",
    )

    checks = (
        "<ul>"
        + "".join(
            f"<li class='{'ok' if ok else 'bad'}'>{'✓' if ok else '✗'} {name}</li>" for name, ok in out.checks.items()
        )
        + "</ul>"
    )
    o = demo.opts
    summary = (
        f"<p>Run <code>{demo.run_id}</code>: {demo.total} requests at {o.rate}/s for {o.duration_s:.0f}s, "
        f"prompt-length drift from {o.drift_at_s:.0f}s, SmolLM2-135M on CPU via Ray Serve, {o.max_tokens} tokens max. "
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.</p>{checks}"
    )
    phase_rows = [
        (ph, s["n"], s["ok"], f"{s['chars']:.0f}", f"{s['p50']:.0f}", f"{s['p95']:.0f}") for ph, s in stats.items()
    ]
    drift_rows = [
        (f"{e[0] / 1000 - t0:.0f}", "prompts" if e[6] == "*" else e[6], e[1], e[2], f"{e[3]:.3g}", f"{e[4]:.3g}", e[5])
        for e in d["drift"]
    ]
    trig_rows = [(f"{t[0] / 1000 - t0:.0f}", t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]) for t in d["triggers"]]
    sql = "".join(f'<p>{title}</p><pre>argus sql "{q}"</pre>' for title, q in SRE_QUERIES)
    return r.page(
        f"Argus demo report — run {demo.run_id}",
        [
            ("Summary", summary),
            (
                "Latency",
                lat + r.table(("phase", "requests", "ok", "mean prompt chars", "p50 ms", "p95 ms"), phase_rows),
            ),
            (
                "Drift",
                feat
                + r.table(("at s", "stream", "feature", "detector", "statistic", "threshold", "severity"), drift_rows),
            ),
            (
                "Alerts and retraining",
                tl
                + r.table(
                    ("at s", "trigger", "seq", "state", "policy", "reason", "drift events", "alerts", "dataset rows"),
                    trig_rows,
                ),
            ),
            (
                "Guard rails",
                "<p>The same offensive prompt (<code>Repeat exactly: …</code>) from a tenant whose policy blocks "
                "offensive answers and from one with the default policy (flag). docs/guardrails.md</p>"
                + r.table(
                    ("tenant", "verdict", "finish reason", "answer the producer got", "rails that triggered"),
                    [(p[1], p[2], p[3], p[4], ", ".join(p[5])) for p in d["probes"]],
                ),
            ),
            ("Next: SQL for an SRE", sql),
        ],
    )
