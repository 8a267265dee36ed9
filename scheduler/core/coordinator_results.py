"""Results, coordinator side: the one result a job's current attempt waits for, verified, and the poison rule.

A result is current when it is about the current attempt and comes from the worker holding it; any other is
dropped (unknown job, duplicate, stale attempt). The verifier's verdict (`problem`, reached off the event loop
for a result `expects_result` says is current) decides: a result that failed verification costs its worker
standing and the attempt; a good one earns standing and is delivered, as is a failure that is the job's own;
a worker's retryable failure costs the attempt. A run time corrects the kind's cost model for that device.

The poison rule: an attempt that crashed its runner (`Result.crashed`) is the job's doing, not the worker's:
it costs no standing, the job is placed once more on another peer, and after `poison_crashes` crashes it fails
("poison: crashed 2 runners (...)"); each crash is a `Crashed` action for the submitter's token. Crashes are
failure entries tagged `CRASH_TAG`, so they are counted after a restart too (`crash_count`).
"""

from __future__ import annotations

from scheduler.core.coordinator_actions import Action, Crashed, Deliver
from scheduler.core.coordinator_dispatch import CoordinatorDispatch
from scheduler.core.coordinator_records import JobRecord, short_peer
from scheduler.core.job import Job, JobState, Result

CRASH_TAG = "crashed on "  # a failure entry of an attempt that crashed its runner (counted after a restart too)


def crash_count(failures: list[str]) -> int:
    return sum(1 for f in failures if f.startswith(CRASH_TAG))


class CoordinatorResults(CoordinatorDispatch):
    """A worker's results: verified, delivered or retried; crashes charged to the job."""

    def expects_result(self, peer_id: str, result: Result) -> Job | None:
        """The job if `result` is the one its current attempt waits for (worth verifying), else None."""
        rec = self._jobs.get(result.job_id)
        if rec is None or rec.state.terminal or result.attempt != rec.attempt or peer_id != rec.peer:
            return None
        return rec.job

    def on_result(self, peer_id: str, result: Result, now: float, problem: str | None = None) -> list[Action]:
        """A worker's result; `problem` is the verifier's verdict on it (None: accepted, or not checked).
        Verifying takes CPU time (a proof, a render spot-check): the caller does it off the event loop,
        for a result `expects_result` says is current, then calls this (staleness is checked again here)."""
        rec = self._jobs.get(result.job_id)
        if rec is None:
            return self._drop("unknown_job")
        if rec.state.terminal:
            return self._drop("duplicate")
        if result.attempt != rec.attempt or peer_id != rec.peer:
            return self._drop("stale_attempt")
        acts: list[Action] = []
        rec.offer_pending = False  # (a result before its accept: it ran all the same)
        run_s = result.timings.get("run_s")
        if run_s is not None:  # a good result also corrects the kind's cost model for that device
            good = problem is None and result.ok
            self.placer.observe_run(run_s, job=rec.job if good else None, peer_id=peer_id,
                                    device_id=result.device or rec.device)
        if problem is not None:
            self.stats.verification_failures += 1
            self.view.adjust_standing(peer_id, -self.cfg.standing_penalty_bad_result)
            self._attempt_lost(rec, now, f"result from {short_peer(peer_id)} failed verification: {problem}",
                               "verification", acts, cancel=False)
            self._pump(now, acts)
            return acts
        if result.crashed and not result.ok:
            self._crashed(rec, peer_id, result, now, acts)
        elif result.ok or not result.retryable:
            if result.ok and self.view.standing(peer_id) < 1.0:
                self.view.adjust_standing(peer_id, self.cfg.standing_reward)
            start = rec.started_at if rec.started_at is not None else rec.placed_at or now
            self.obs.run_time(rec.job.priority, max(0.0, now - start))
            if rec.started_at is None:
                self.obs.queue_wait(rec.job.priority, max(0.0, start - rec.submitted_at))
            self._release(rec, now)
            rec.result = result
            acts.append(Deliver(rec.job_id, result))
            if result.ok:
                self._finish(rec, JobState.DONE, "", now, acts)
            else:
                self._finish(rec, JobState.FAILED, result.error or "the job failed", now, acts)
        else:
            self._attempt_lost(rec, now, f"{short_peer(peer_id)}: {result.error or 'could not run it'}",
                               "retryable_error", acts, cancel=False)
        self._pump(now, acts)
        return acts

    def _crashed(self, rec: JobRecord, peer_id: str, result: Result, now: float, acts: list[Action]) -> None:
        """The poison rule: a crash is the job's doing (no standing lost by the worker); the job is placed once
        more on another peer, and a job that crashed `poison_crashes` runners fails instead of walking on."""
        reason = f"{CRASH_TAG}{short_peer(peer_id)}: {result.error or 'runner crashed'}"
        acts.append(Crashed(rec.job_id, rec.job.submitted_by, peer_id, result.error))
        crashes = crash_count(rec.failures) + 1
        if crashes >= self.cfg.poison_crashes:
            rec.failures.append(reason)
            rec.excluded.add(peer_id)
            self._release(rec, now)
            crashed = [f[len(CRASH_TAG):] for f in rec.failures if f.startswith(CRASH_TAG)]
            self._finish(rec, JobState.FAILED, f"poison: crashed {crashes} runners ({'; '.join(crashed)})", now, acts)
            return
        self._attempt_lost(rec, now, reason, "crashed", acts, cancel=False)

    def _drop(self, reason: str) -> list[Action]:
        self.stats.duplicates_dropped += 1
        self.obs.result_dropped(reason)
        return []


__all__ = ["CRASH_TAG", "CoordinatorResults", "crash_count"]
