import pytest

from scheduler.core.quota import Limits, QuotaExceeded, Quotas, TokenBucket


def test_token_bucket_refills_at_its_rate():
    b = TokenBucket(rate=10, burst=5)
    assert all(b.take(0.0) for _ in range(5))
    assert not b.take(0.0)
    assert b.take(0.1)  # one token back after 0.1 s
    assert not b.take(0.1)


def test_submit_rate_and_idempotent_resubmit():
    q = Quotas(Limits(submit_rate=1.0))
    q.admit_submit("alice", "j1", 0.0)
    q.admit_submit("alice", "j2", 0.0)  # burst of 2
    q.admit_submit("alice", "j1", 0.0)  # resubmit of an active job is free
    with pytest.raises(QuotaExceeded, match="submissions/s") as e:
        q.admit_submit("alice", "j3", 0.0)
    assert e.value.limit == "submit_rate"
    q.admit_submit("bob", "j9", 0.0)  # another tenant is not affected


def test_max_active_frees_when_jobs_finish():
    q = Quotas(Limits(submit_rate=1e6, max_active=2))
    q.admit_submit("t", "a", 0)
    q.admit_submit("t", "b", 0)
    with pytest.raises(QuotaExceeded, match="unfinished"):
        q.admit_submit("t", "c", 0)
    q.finished("t", "a", 0.0, 1)
    q.admit_submit("t", "c", 1)


def test_device_seconds_per_window():
    q = Quotas(Limits(submit_rate=1e6, device_seconds=10, window_s=100))
    q.admit_submit("t", "a", 0)
    q.finished("t", "a", 11.0, 1)
    with pytest.raises(QuotaExceeded, match="device-seconds"):
        q.admit_submit("t", "b", 50)
    q.admit_submit("t", "b", 102)  # the usage left the window


def test_offer_rate_per_peer():
    q = Quotas(Limits(offer_rate=1.0))
    assert q.admit_offer("p", 0) and q.admit_offer("p", 0)
    assert not q.admit_offer("p", 0)
    assert q.admit_offer("other", 0)


def test_admin_tokens_are_exempt_but_counted():
    q = Quotas(Limits(submit_rate=1.0, max_active=1))
    for i in range(5):
        q.admit_submit("ops", f"j{i}", 0.0, exempt=True)
    q.finished("ops", "j0", 0.0, 1.0)
    with pytest.raises(QuotaExceeded):
        q.admit_submit("tenant", "x", 0.0) or q.admit_submit("tenant", "y", 0.0)
