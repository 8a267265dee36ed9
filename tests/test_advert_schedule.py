"""The advert schedule (mesh/advert_schedule.py): pure, time passed in; nothing here depends on machine speed."""

import random

import pytest

from mesh.advert_schedule import MAX_GROWTH, AdvertSchedule, Publish, ScheduleConfig

CFG = ScheduleConfig(debounce_s=0.1, min_refresh_s=2.0, max_refresh_s=30.0, refresh_budget=2.0, change_budget=4.0,
                     change_burst=3.0, jitter=0.0)


def steady(n: int) -> AdvertSchedule:
    """A schedule past its first full advert, its refresh interval already grown to the one for n peers."""
    s = AdvertSchedule(CFG, now=0.0)
    s.interval_s = CFG.refresh_interval(n)
    assert s.poll(0.0, n) is Publish.FULL
    return s


def drive(s: AdvertSchedule, until: float, n: int, changes=(), joins=()) -> list[tuple[float, Publish]]:
    """Run the schedule as the gossip loop does: wake at `due` (or at the next event), poll, publish."""
    events = sorted([(t, "change") for t in changes] + [(t, "join") for t in joins])
    out, now = [], 0.0
    while now <= until:
        nxt = s.due(now, n)
        if events and events[0][0] <= nxt:
            now, what = events.pop(0)
            (s.changed if what == "change" else s.peer_joined)(now)
        else:
            now = max(now, nxt)
        if now > until:
            break
        kind = s.poll(now, n)
        if kind is not None:
            out.append((now, kind))
    return out


def test_first_advert_is_full_and_at_once():
    s = AdvertSchedule(CFG, now=5.0)
    assert s.due(5.0, 1) == 5.0
    assert s.poll(5.0, 1) is Publish.FULL
    assert s.poll(5.0, 1) is None


def test_refresh_interval_grows_with_the_view_and_is_clamped():
    assert CFG.refresh_interval(1) == 2.0
    assert CFG.refresh_interval(20) == 10.0
    assert CFG.refresh_interval(40) == 20.0
    assert CFG.refresh_interval(10_000) == 30.0


@pytest.mark.parametrize("n", [5, 20, 40, 100, 1000])
def test_refreshes_received_per_node_are_bounded_whatever_the_view_size(n):
    pubs = drive(steady(n), 600.0, n)
    received = len(pubs) / 600.0 * n  # every node receives every advert of its view
    # the budget holds between the two clamps; beyond max_refresh_s a view is too big for one shard
    assert received <= max(CFG.refresh_budget, n / CFG.max_refresh_s) * 1.01
    if CFG.refresh_interval(n) < CFG.max_refresh_s:
        assert received >= CFG.refresh_budget * 0.95 or CFG.refresh_interval(n) == CFG.min_refresh_s
    assert all(k is Publish.FULL for _, k in pubs)


def test_interval_grows_at_most_by_max_growth_per_refresh():
    s = AdvertSchedule(CFG, now=0.0)
    times = [t for t, _ in drive(s, 200.0, 60)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] == pytest.approx(2.0 * MAX_GROWTH)
    assert all(b <= a * MAX_GROWTH + 1e-9 for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] == pytest.approx(30.0)


def test_a_change_is_published_after_the_debounce_and_a_burst_is_one_advert():
    pubs = drive(steady(20), 9.0, 20, changes=[3.0, 3.02, 3.05, 3.09])
    assert pubs == [(pytest.approx(3.1), Publish.CHANGE)]


def test_sustained_churn_is_bounded_by_the_change_budget_across_the_view():
    n = 40
    s = steady(n)
    changes = [0.5 + i * 0.05 for i in range(int(600 / 0.05))]  # a change every 50 ms for 10 minutes
    pubs = drive(s, 600.0, n, changes=changes)
    change_rate = sum(1 for _, k in pubs if k is Publish.CHANGE) / 600.0
    # each of n nodes sends at most change_budget / n per second (plus the initial burst)
    assert change_rate * n <= CFG.change_budget * 1.02 + CFG.change_burst * n / 600
    assert change_rate * n >= CFG.change_budget * 0.9  # the budget is used, not wasted
    # the first changes of a quiet node go out at once (the burst)
    assert pubs[0] == (pytest.approx(0.6), Publish.CHANGE)


def test_a_new_peer_gets_a_full_advert_early_from_the_same_budget():
    pubs = drive(steady(20), 5.0, 20, joins=[1.0])  # next refresh only at 10 s
    assert pubs == [(pytest.approx(1.1), Publish.FULL)]


def test_a_refresh_carries_a_pending_change():
    s = AdvertSchedule(CFG, now=0.0)
    s.poll(0.0, 2)  # refresh every 2 s
    s._tokens = 0.0  # budget spent: the change waits for a token (2 s at n=2 ... refresh comes first)
    s._tokens_at = 0.0
    s.changed(1.95)
    assert s.poll(2.0, 2) is Publish.FULL
    assert s.poll(2.1, 2) is None  # nothing pending any more


def test_jitter_spreads_refreshes_within_bounds_and_is_announced():
    cfg = ScheduleConfig(jitter=0.1)
    s = AdvertSchedule(cfg, now=0.0, rng=random.Random(7))
    s.poll(0.0, 1)
    nexts = []
    for _ in range(50):
        t = s.due(0.0 if not nexts else nexts[-1], 1)
        nexts.append(t)
        s.poll(t, 1)
    gaps = [b - a for a, b in zip(nexts, nexts[1:], strict=False)]
    assert min(gaps) >= 2.0 * 0.9 - 1e-9 and max(gaps) <= s.announced_interval_s + 1e-9
    assert len({round(g, 6) for g in gaps}) > 10


def test_bad_configs_are_refused():
    with pytest.raises(ValueError):
        ScheduleConfig(min_refresh_s=10, max_refresh_s=5)
    with pytest.raises(ValueError):
        ScheduleConfig(change_burst=0.5)
