"""``argus fairness``: how the model treats each segment of its users (docs/fairness.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from services.cli.base import app, clickhouse_for, err, fail

fairness_app = typer.Typer(help="Fairness of the model's answers across segments of its users (docs/fairness.md).")
app.add_typer(fairness_app, name="fairness")


@fairness_app.command("report")
def report_cmd(
    since: str = typer.Option("7d", "--since", help="How far back: 30m, 12h, 7d..."),
    by: str = typer.Option(
        "tenant", "--by", help="A request metadata key (locale, region, age_band, plan...), or tenant / model_version."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="The HTML page (default: fairness-<by>.html here)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    n_boot: int = typer.Option(2000, "--n-boot", min=100, max=100_000, help="Bootstrap samples of the intervals."),
    q: float = typer.Option(0.05, "--fdr", help="False-discovery rate for the segments called out as worse."),
) -> None:
    """Outcome rates and means per segment with confidence intervals (fairlearn MetricFrame),
    demographic parity on refusals and flags, equalized odds of the flags against feedback,
    and the segments treated significantly worse than the rest."""
    from rich.table import Table

    from services.common.clickhouse import get_client
    from services.common.durations import parse_duration
    from services.fairness_report import build, fetch, html_page

    if not by or len(by) > 64 or not by.replace("_", "").replace("-", "").replace(".", "").isalnum():
        fail(f"--by {by[:64]!r}: a metadata key is letters, digits, '_', '-' or '.'")
    since_s = int(parse_duration(since))
    ch = clickhouse_for("argus_sre")
    client = get_client(ch)
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        aggregates = fetch(client, ch.database, since_s, by)
    except ClickHouseError as exc:
        fail(str(exc).split("(for url")[0].strip())
        return
    finally:
        client.close()
    if not aggregates:
        fail(f"no answers in the last {since}")
    rep = build(aggregates, by, since_s, n_boot=n_boot)
    path = out or Path(f"fairness-{by}.html")
    path.write_text(html_page(rep))
    worse = rep.significant(q)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "by": by,
                    "since_s": since_s,
                    "answers": rep.answers,
                    "labelled": rep.labelled,
                    "equalized_odds_difference": rep.equalized_odds_difference,
                    "outcomes": [
                        {k: v for k, v in o.__dict__.items() if not (isinstance(v, float) and math.isnan(v))}
                        for o in rep.outcomes
                    ],
                    "worse_than_the_rest": [
                        {"outcome": o, "segment": s, "value": v, "p_adjusted": p} for o, s, v, p in worse
                    ],
                    "html": str(path),
                },
                default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x),
            )
        )
        return
    table = Table(title=f"answers by {by}, last {since} ({rep.answers} answers, {rep.labelled} with feedback)")
    table.add_column("segment")
    table.add_column("answers", justify="right")
    shown = [o for o in rep.outcomes if o.segments]
    for o in shown:
        table.add_column(o.name, justify="right")
    segments = sorted({s["segment"] for o in shown for s in o.segments})
    for seg in segments:
        cells = []
        n = 0
        for o in shown:
            entry = next((s for s in o.segments if s["segment"] == seg), None)
            if entry is None:
                cells.append("")
                continue
            n = max(n, entry["n"])
            pct = o.kind == "rate"
            value = f"{entry['value']:.1%}" if pct else f"{entry['value']:,.0f}"
            ci = (
                f"[{entry['ci_low']:.1%}, {entry['ci_high']:.1%}]"
                if pct
                else f"[{entry['ci_low']:,.0f}, {entry['ci_high']:,.0f}]"
            )
            star = " *" if entry["p_adj"] is not None and entry["p_adj"] <= q else ""
            cells.append(f"{value} {ci}{star}")
        table.add_row(seg, str(n), *cells)
    err.print(table)
    for o in rep.outcomes:
        if o.name in ("refused", "flagged") and o.segments:
            err.print(
                f"{o.name}: demographic parity difference {o.difference:.1%} "
                f"[{o.difference_ci[0]:.1%}, {o.difference_ci[1]:.1%}], ratio {o.ratio:.2f}",
                highlight=False,
            )
    if rep.equalized_odds_difference is not None:
        err.print(f"guard flags vs negative feedback: equalized-odds difference {rep.equalized_odds_difference:.3f}")
    for o, s, v, p in worse:
        err.print(f"[bold]*[/] {s}: {o} {v:.3g}, worse than the rest (BH-adjusted p {p:.2g})", highlight=False)
    err.print(f"report: {path}")
