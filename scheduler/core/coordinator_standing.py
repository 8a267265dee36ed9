"""The coordinator's side of peer standing (`MembershipView.standing`): the bookkeeping that charges a worker.

A worker that loses jobs (crash, network) takes a small dent, at most once per lease period and never below
`standing_floor_lost` (`_penalize_lost`). A worker whose fresh advert shows free slots while its claims find
none is lying about its capacity (`_capacity_lie`; the caller charges `standing_penalty_capacity_lie`).
Results move standing too (a good one earns `standing_reward`, a bad one costs `standing_penalty_bad_result`):
that is `coordinator_results.py`.
"""

from __future__ import annotations

from scheduler.core.coordinator_state import CoordinatorState
from scheduler.core.job import Reject


class CoordinatorStanding(CoordinatorState):
    """Standing lost for lost jobs, and the capacity-lie test on a refused claim."""

    def _capacity_lie(self, peer_id: str, msg: Reject, now: float) -> bool:
        """A worker whose fresh advert shows free slots but whose claims find none is lying about its capacity
        (to attract work, or to look big). Not a lie: slots this coordinator's own jobs and leases hold there
        (a burst of its jobs outruns the worker's next advert), a refusal for a share or rate limit, an advert
        older than a change takes to go out (not the refresh interval, which grows with the mesh)."""
        st = self.view.get(peer_id)
        if st is None or peer_id == self.view.self_peer_id or not msg.load \
                or now - st.last_seen > min(st.advert.interval_s, self.cfg.fresh_load_s) \
                or "share" in msg.reason or "rate" in msg.reason:
            return False
        if sum(v[0] for v in msg.load.values()) != 0:
            return False
        advertised = sum(d.free_slots for d in st.advert.devices)
        return advertised > self._slots_held_on(peer_id, but=msg.job_id)

    def _slots_held_on(self, peer_id: str, but: str) -> int:
        """Slots this coordinator holds on `peer_id`: one per job placed there outside a lease (`but` aside),
        one per lease there (its jobs queue on its one slot)."""
        leases = [lease for lease in self.leases.leases() if lease.peer_id == peer_id]
        on_leases = set().union(*(lease.jobs for lease in leases)) if leases else set()
        return len(self._by_peer.get(peer_id, set()) - on_leases - {but}) + len(leases)

    def _penalize_lost(self, peer: str, now: float) -> None:
        """A worker lost jobs (crash, network): a small dent, once per lease period, never below the floor."""
        last = self._penalized.get(peer)
        if last is not None and now - last < self.cfg.lease_s:
            return
        self._penalized[peer] = now
        if len(self._penalized) > 4096:
            self._penalized = {p: t for p, t in self._penalized.items() if now - t < self.cfg.lease_s}
        cur = self.view.standing(peer)
        new = max(min(cur, self.cfg.standing_floor_lost), cur - self.cfg.standing_penalty_lost)
        if new < cur:
            self.view.adjust_standing(peer, new - cur)


__all__ = ["CoordinatorStanding"]
