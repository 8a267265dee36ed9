from dataclasses import replace

import trio

from mesh.advert import Advert, DeviceAdvert
from mesh.membership import Joined, Left, MembershipView, Updated

DEV = DeviceAdvert("0:0", "gpu", "nv", "x", 80, 8 << 30, True, True, 5000.0, 9000.0, 2, 2, 0)


def ad(pid: str, seq: int, free=2) -> Advert:
    return Advert(pid, b"k" * 32, seq, 0.0, devices=(replace(DEV, free_slots=free),))


def test_newer_sequence_wins_and_older_is_stale():
    v = MembershipView("me", ttl_s=6)
    assert v.apply(ad("a", 5), now=0) == Joined("a")
    assert v.apply(ad("a", 4, free=0), now=1) is None
    assert v.stale == 1
    assert v.get("a").advert.free_slots == 2
    assert v.apply(ad("a", 6, free=0), now=2) == Updated("a")
    assert v.get("a").advert.free_slots == 0
    # same capacity, newer seq: refreshes liveness without an update event
    assert v.apply(ad("a", 7, free=0), now=3) is None
    assert v.get("a").last_seen == 3


def test_replay_of_same_sequence_is_stale():
    v = MembershipView("me", ttl_s=6)
    v.apply(ad("a", 5), now=0)
    assert v.apply(ad("a", 5), now=1) is None
    assert v.stale == 1


def test_expiry_after_ttl_never_self():
    v = MembershipView("me", ttl_s=6)
    v.apply(ad("me", 1), now=0)
    v.apply(ad("a", 1), now=0)
    v.apply(ad("b", 1), now=4)
    assert v.expire(now=6) == []
    assert v.expire(now=6.5) == [Left("a", "expired")]
    assert "a" not in v and "b" in v and "me" in v
    assert v.expire(now=100) == [Left("b", "expired")]
    assert [p.peer_id for p in v.peers()] == ["me"]


def test_admission_filter_ignores_outsiders():
    v = MembershipView("me", ttl_s=6, admit=lambda pid: pid == "friend")
    assert v.apply(ad("stranger", 1), now=0) is None
    assert v.apply(ad("friend", 1), now=0) == Joined("friend")
    assert v.refused == 1 and "stranger" not in v


def test_load_override_until_next_advert():
    v = MembershipView("me", ttl_s=6)
    v.apply(ad("a", 1, free=2), now=0)
    v.note_load("a", "0:0", 0, 7)
    assert v.get("a").devices()[0].free_slots == 0
    assert v.get("a").devices()[0].queue_depth == 7
    v.apply(ad("a", 2, free=1), now=1)
    assert v.get("a").devices()[0].free_slots == 1


def test_standing_clamped_and_survives_expiry():
    v = MembershipView("me", ttl_s=1)
    v.apply(ad("a", 1), now=0)
    assert v.standing("a") == 1.0
    assert v.adjust_standing("a", -0.3) == 0.7
    v.expire(now=10)
    v.apply(ad("a", 2), now=11)
    assert v.standing("a") == 0.7
    assert v.adjust_standing("a", -5) == 0.0
    assert v.adjust_standing("a", +5) == 1.0


async def test_expiry_driven_by_trio_clock(autojump_clock):
    """The gossip service's expiry loop shape, on trio's MockClock: no real waiting."""
    v = MembershipView("me", ttl_s=6)
    left = []

    async def expire_loop():
        while True:
            await trio.sleep(1)
            left.extend(v.expire(trio.current_time()))

    v.apply(ad("a", 1), now=trio.current_time())
    async with trio.open_nursery() as n:
        n.start_soon(expire_loop)
        await trio.sleep(5.5)
        assert left == []
        await trio.sleep(2)
        assert left == [Left("a", "expired")]
        n.cancel_scope.cancel()


def test_replayed_adverts_are_dropped_without_touching_standing():
    # anyone can replay a peer's signed adverts: the replay is dropped and the peer's standing is untouched
    v = MembershipView("me", ttl_s=6)
    v.apply(replace(ad("a", 10), timestamp=1000.0), now=0)
    v.apply(replace(ad("a", 9), timestamp=998.0), now=1)  # reordered by one: stale, not a replay
    assert v.replays == 0 and v.stale == 1
    for _ in range(25):
        assert v.apply(replace(ad("a", 3), timestamp=900.0), now=2) is None
    assert v.replays == 25 and v.standing("a") == 1.0
    assert v.get("a").advert.seq == 10


def test_a_peer_that_left_is_not_brought_back_by_its_old_adverts():
    v = MembershipView("me", ttl_s=6)
    v.apply(ad("a", 10), now=0)
    assert v.expire(7.0) == [Left("a", "expired")]
    assert v.apply(ad("a", 10), now=8) is None and v.apply(ad("a", 4), now=8) is None  # replays of the dead
    assert "a" not in v and v.replays == 2
    assert v.apply(ad("a", 11), now=9) == Joined("a")  # its own newer advert: back
