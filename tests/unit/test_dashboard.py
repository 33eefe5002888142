"""The Grafana dashboard (deploy/grafana/argus-dashboard.json) against the metric
catalogue: every Prometheus query names series the services really export, and every
catalogue metric is on the dashboard. (Its ClickHouse queries run against real data in
tests/integration/test_ingest.py.)"""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import CATALOGUE, Metrics
from tests.conftest import REPO

DASHBOARD = json.loads((REPO / "deploy/grafana/argus-dashboard.json").read_text())


def exported_series() -> set[str]:
    """Sample names a service exposes once every catalogue metric has a value."""
    m = Metrics("probe")
    for name, d in CATALOGUE.items():
        labels = {k: "x" for k in d.labels if k != "service"}
        {
            "counter": m.inc,
            "gauge": lambda n, **kw: m.set(n, 1, **kw),
            "histogram": lambda n, **kw: m.observe(n, 1, **kw),
        }[d.kind](name, **labels)
    return {s.name for fam in text_string_to_metric_families(m.exposition().decode()) for s in fam.samples}


def targets(kind: str) -> list[dict]:
    return [t for p in DASHBOARD["panels"] for t in p["targets"] if t["datasource"]["type"] == kind]


def test_prometheus_queries_name_exported_series_only() -> None:
    series = exported_series()
    used = {name for t in targets("prometheus") for name in re.findall(r"\b(argus_[a-z_]+)", t["expr"])}
    assert used and used <= series, sorted(used - series)


def test_every_catalogue_metric_is_on_the_dashboard() -> None:
    exprs = " ".join(t["expr"] for t in targets("prometheus"))
    missing = [name for name in CATALOGUE if name.removesuffix("_total") not in exprs]
    assert not missing, missing


def test_dashboard_shape() -> None:
    panels = DASHBOARD["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert {i["name"] for i in DASHBOARD["__inputs"]} == {"DS_PROMETHEUS", "DS_CLICKHOUSE"}
    for p in panels:
        assert p["targets"] and set(p["gridPos"]) == {"x", "y", "w", "h"}, p["title"]
        assert p["datasource"]["uid"] in ("${DS_PROMETHEUS}", "${DS_CLICKHOUSE}"), p["title"]
    assert len(targets("grafana-clickhouse-datasource")) >= 6
