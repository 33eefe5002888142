"""The demo finds its requests in ClickHouse by the run id in their metadata, which ingest
PII-protects: every id it can draw must reach ClickHouse unchanged."""

from __future__ import annotations

import itertools

from services.common.pii import PiiPolicy, find_pii, scrub
from services.demo import new_run_id


def test_run_ids_are_never_taken_for_pii() -> None:
    # the worst cases are ids whose hex part is all digits (phone numbers, national ids)
    worst = ["r" + "".join(d) for d in itertools.product("0189", repeat=8)]
    drawn = [new_run_id() for _ in range(2000)]
    for run_id in worst + drawn:
        assert run_id[0] == "r" and len(run_id) == 9
        assert not find_pii(run_id), run_id
        assert scrub(run_id, PiiPolicy(mode="redact")).text == run_id
    # what the id used to be: eight hex digits alone, once redacted as a phone when all
    # were digits; bare runs under 10 digits are no longer phones (issue 19), written
    # like a phone number they still are
    assert not find_pii("82432764") and find_pii("+8 2432 764")
