"""`argus fairness report` against the real ClickHouse engine, as an SRE runs it (issue 20)."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

from services.common import migrations
from services.common.clickhouse import get_client
from services.common.settings import KafkaSettings
from tests.integration.helpers import cli


async def test_the_report_finds_the_locale_refused_more_often_with_its_interval(
    clickhouse_settings, clickhouse_users: dict, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """1,600 answers across four locales; one locale's requests are refused at 4x the
    others' rate, and some answers have feedback. Run as the read-only SRE user, the
    report calls that locale out on refusals and flags (and nothing else), with fairlearn's
    demographic parity and an interval that excludes no gap; the HTML page has a chart per outcome."""
    db = clickhouse_settings.database
    admin = get_client(clickhouse_settings, database="default")
    migrations.apply(admin, db)
    rng = random.Random(3)
    requests, responses, feedback = [], [], []
    for i in range(1600):
        rid, locale = str(uuid.uuid4()), f"l{i % 4}"
        refused = rng.random() < (0.2 if locale == "l2" else 0.05)
        requests.append(
            f"('{rid}', now64(3), 'm', 'acme', NULL, 'q {i}', map('locale', '{locale}'), 1, 3, '_t', 0, {i})"
        )
        responses.append(
            f"('{rid}', '{uuid.uuid4()}', now64(3), 'm', 'm', 'v1', 'acme', NULL, 'a', 1, "
            f"'{'content_filter' if refused else 'stop'}', 3, 2, {rng.gauss(400, 40):.1f}, 'ok', false, "
            f"'{'block' if refused else 'allow'}', '_t', 0, {i})"
        )
        if i % 3 == 0:
            feedback.append(
                f"('{uuid.uuid4()}', '{rid}', now64(3), 'acme', NULL, 'thumbs', {float(rng.random() > 0.1)}, '_t', 0, {i})"
            )
    admin.command(
        f"INSERT INTO {db}.inference_requests (request_id, created_at, model, tenant, user_in, prompt_in, metadata_in, "
        f"message_count, prompt_chars, _topic, _partition, _offset) VALUES {', '.join(requests)}"
    )
    admin.command(
        f"INSERT INTO {db}.inference_responses (request_id, response_id, served_at, model, response_model, "
        "model_version, tenant, user_in, output_in, output_chars, finish_reason, input_tokens, output_tokens, "
        f"latency_ms, status, shadow, guard_action, _topic, _partition, _offset) VALUES {', '.join(responses)}"
    )
    admin.command(
        f"INSERT INTO {db}.feedback (feedback_id, request_id, created_at, tenant, user_in, kind, score, "
        f"_topic, _partition, _offset) VALUES {', '.join(feedback)}"
    )
    admin.close()

    sre = clickhouse_users["argus_sre"] + "/" + db
    html = tmp_path / "fairness.html"
    out = await cli(
        kafka_settings,
        "fairness", "report", "--since", "1d", "--by", "locale", "--json", "--out", str(html),
        env={"ARGUS_CLI_CLICKHOUSE__DSN": sre},
        timeout_s=120,
    )  # fmt: skip
    report = json.loads(out)
    assert report["answers"] == 1600 and report["labelled"] == 534
    # blocked answers are refused and flagged: both call the locale out, nothing else does
    assert sorted((w["outcome"], w["segment"]) for w in report["worse_than_the_rest"]) == [
        ("flagged", "l2"),
        ("refused", "l2"),
    ]
    (refused,) = [o for o in report["outcomes"] if o["name"] == "refused"]
    by_segment = {s["segment"]: s for s in refused["segments"]}
    assert set(by_segment) == {"l0", "l1", "l2", "l3"} and all(s["n"] == 400 for s in by_segment.values())
    assert by_segment["l2"]["ci_low"] > max(s["ci_high"] for k, s in by_segment.items() if k != "l2")
    low, high = refused["difference_ci"]
    assert 0.05 < low <= refused["difference"] <= high < 0.25  # the injected gap: 15 points
    assert refused["ratio"] < 0.5 and report["equalized_odds_difference"] is not None
    page = html.read_text()
    assert page.count("<svg") == 8 and "<b>l2</b> on refused" in page
