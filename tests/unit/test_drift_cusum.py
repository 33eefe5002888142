"""The CUSUM detectors on synthetic streams with known change points: calibrated at low
base rates, two-sided where configured, one event per episode, a located change point,
the end of an episode, and exact checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from services.drift.calibration import load
from services.drift.cusum import MeanShift, RateShift
from services.drift.detectors import CusumNumeric, CusumRate

CAL = load()["detectors"]
H_RATE, H_MEAN = CAL["rate_shift"]["threshold"], CAL["mean_shift"]["threshold"]


def run(det: object, xs: object) -> list[tuple[int, str, str]]:
    """(1-based index, started|ended, direction) of every event."""
    out = []
    for i, x in enumerate(xs, 1):
        det.update(x)  # type: ignore[attr-defined]
        if det.drift_detected:  # type: ignore[attr-defined]
            out.append((i, "started", det.direction))  # type: ignore[attr-defined]
        if det.drift_ended:  # type: ignore[attr-defined]
            out.append((i, "ended", ""))
    return out


def test_a_warm_up_without_a_single_error_does_not_make_the_next_error_an_alarm() -> None:
    """DDM at a 1 % base rate: a warm-up window with no error gave a zero rate and spread,
    and the next error fired (8 false alarms in 121k events). The rate reference waits
    for enough ones whatever the base rate."""
    rng = np.random.default_rng(21)
    det = RateShift(H_RATE, sides="both")
    events = run(det, rng.random(200_000) < 0.01)
    assert [e for e in events if e[1] == "started"] == []
    assert det.moments[0] >= 1000 and det.p0 == pytest.approx(0.01, rel=0.2)


def test_stationary_rates_stay_within_the_false_alarm_budget() -> None:
    """400,000 stationary events at base rates from 0.5 % to 50 %: at most 1 false
    alarm per 100k (river's default DDM raises 27 per 100k at 0.5 %, bench/RESULTS.md)."""
    starts = 0
    for base in (0.005, 0.05, 0.3, 0.5):
        rng = np.random.default_rng(int(base * 1000))
        starts += sum(e[1] == "started" for e in run(RateShift(H_RATE, sides="both"), rng.random(100_000) < base))
    assert starts <= 4


def test_a_label_rate_rise_is_found_soon_and_located() -> None:
    """The issue's case, a negative-feedback rate from 0.31 to 0.46 (river's default ADWIN
    took 263 events on it): found once, going up, with the change located near 5,000."""
    delays, errors = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        det = RateShift(H_RATE, sides="both")
        events = run(det, np.concatenate([rng.random(5000) < 0.31, rng.random(3000) < 0.46]))
        started = [e for e in events if e[1] == "started"]
        assert len(started) == 1 and started[0][2] == "up" and started[0][0] > 5000, (seed, events)
        delays.append(started[0][0] - 5000)
        errors.append(abs(det.change_point - 5001))
    assert np.median(delays) < 400, delays
    assert np.median(errors) <= 0.25 * np.median(delays), (errors, delays)


def test_a_fall_is_found_only_where_the_feature_is_two_sided() -> None:
    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.random(5000) < 0.30, rng.random(3000) < 0.15])
    both, up = run(RateShift(H_RATE, sides="both"), xs), run(RateShift(H_RATE, sides="up"), xs)
    assert [(e[1], e[2]) for e in both] == [("started", "down")] and both[0][0] > 5000
    assert up == []


def test_an_episode_ends_when_the_rate_is_back_and_a_new_change_is_a_new_episode() -> None:
    rng = np.random.default_rng(4)
    xs = np.concatenate(
        [rng.random(5000) < 0.05, rng.random(3000) < 0.15, rng.random(6000) < 0.05, rng.random(3000) < 0.15]
    )
    events = run(RateShift(H_RATE, sides="up"), xs)
    assert [e[1] for e in events] == ["started", "ended", "started"], events
    assert 5000 < events[0][0] < 8000 < events[1][0] < 14000 < events[2][0]


def test_a_stream_without_errors_is_pinned_and_then_errors_are_a_change() -> None:
    det = RateShift(H_RATE, sides="up")
    events = run(det, [False] * 25_000 + [True, False] * 50)
    assert det.pinned and len(events) == 1 and 25_000 < events[0][0] < 25_020


def test_a_quarter_sigma_shift_is_one_event_with_its_change_point() -> None:
    """Ten skewed streams, +0.25 sd from event 6,000: each change is exactly one started
    event, located, and it does not end while the shift holds. The 60,000 events before the changes may hold a false alarm (the
    budget, 1 per 100k, expects 0.6; seed 107 has a 5.3-sigma run of high values at
    2,215-2,275), which must then have ended before the change."""
    delays, errors, false_alarms = [], [], 0
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        x = rng.lognormal(3.5, 0.6, 12_000)
        x[6000:] += 0.25 * x[:6000].std()
        det = MeanShift(H_MEAN)
        events = run(det, x)
        before = [e for e in events if e[0] <= 6000]
        after = [(e[1], e[2]) for e in events if e[0] > 6000]
        false_alarms += sum(e[1] == "started" for e in before)
        # one event; a constant added to a skewed feature moves its normal scores up and
        # squeezes their low tail: the mean or the spread design may see it first
        assert len(after) == 1 and after[0] in (("started", "up"), ("started", "narrower")), (seed, events)
        assert not before or before[-1][1] == "ended", (seed, events)
        delays.append(next(e[0] for e in events if e[0] > 6000) - 6000)
        errors.append(abs(det.change_point - 6001))
    assert false_alarms <= 1
    assert np.median(delays) < 900, delays
    assert np.median(errors) <= 0.25 * np.median(delays), (errors, delays)


def test_a_ramp_that_keeps_rising_is_one_episode() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, 15_000)
    x[5000:] += np.clip(np.arange(10_000) / 3000, 0, 1) * 1.5  # up 1.5 sd over 3,000 events, then held
    events = run(MeanShift(H_MEAN), x)
    assert [(e[1], e[2]) for e in events] == [("started", "up")], events


def test_a_constant_feature_that_changes_is_found() -> None:
    events = run(MeanShift(H_MEAN), [40.0] * 3000 + [41.0] * 20)
    assert events and events[0][1] == "started" and 3000 < events[0][0] <= 3020


def test_alarm_evidence_and_checkpoint_mid_episode_round_trip_exactly() -> None:
    from services.drift.monitor import StreamMonitor
    from services.drift.state import dump_monitor, load_monitor

    rng = np.random.default_rng(9)
    mon = StreamMonitor("m|v1", load())
    rate = [a for x in rng.random(4000) < 0.1 for a in [mon._binary("error")[0].update(bool(x), "error", 0)] if a]
    assert rate == []
    det: CusumRate = mon._binary("error")[0]
    alarms = [a for i, x in enumerate(rng.random(3000) < 0.4, 4001) if (a := det.update(bool(x), "error", i))]
    assert len(alarms) == 1 and alarms[0].direction == "up" and alarms[0].severity == "critical"
    assert 4000 < alarms[0].position < 4100 and alarms[0].current_summary["rate"] > 0.3
    restored = load_monitor(dump_monitor(mon), load())
    assert dump_monitor(restored) == dump_monitor(mon)
    assert restored._binary("error")[0].in_alarm  # the episode is still open: no second start
    num: CusumNumeric = restored._numeric("latency_ms")[0]
    assert isinstance(num, CusumNumeric) and not num.in_alarm


def test_sides_per_feature_come_from_the_defaults_and_the_settings() -> None:
    from services.drift.monitor import StreamMonitor
    from services.drift.settings import DriftSettings

    plain = StreamMonitor("m|v1", load())
    assert plain._binary("error")[0].detector.sides == "up"
    assert plain._binary("negative_feedback")[0].detector.sides == "both"
    settings = DriftSettings(rate_sides={"error": "both"})
    configured = StreamMonitor("m|v1", load() | {"rate_sides": settings.rate_sides})
    assert configured._binary("error")[0].detector.sides == "both"
    with pytest.raises(ValueError):
        DriftSettings(rate_sides={"error": "sideways"})


def test_a_new_stream_is_watched_from_its_first_events_and_the_warm_up_retires() -> None:
    """The mean CUSUM waits for 2,000 values; until then river's ADWIN (at the delta
    calibrated per stream start) watches a numeric feature: a demo's doubled prompts are
    found within tens of events. It retires after 2,000 events and gives its episode up,
    so the CUSUM can raise the next change."""
    from services.drift.features import Features
    from services.drift.monitor import StreamMonitor
    from services.drift.state import dump_monitor, load_monitor

    rng = np.random.default_rng(12)
    mon = StreamMonitor("m|*", load())
    xs = np.concatenate([rng.lognormal(4, 0.4, 50), 2 * rng.lognormal(4, 0.4, 60)])
    found = [(mon.position, a.detector) for x in xs for a in mon.observe(Features("m|*", numeric={"len": float(x)}))]
    assert found and found[0][1] == "river.ADWIN" and 50 < found[0][0] <= 110, found  # ADWIN checks every 32
    restored = load_monitor(dump_monitor(mon), load())
    assert dump_monitor(restored) == dump_monitor(mon) and restored.open == {"len": "river.ADWIN"}
    for x in 2 * rng.lognormal(4, 0.4, 2000):
        restored.observe(Features("m|*", numeric={"len": float(x)}))
    assert "len" not in restored.open  # retired: the episode was given up
