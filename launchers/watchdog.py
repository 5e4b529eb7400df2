"""The sweep's stall guard: no sweep waits forever for resources that nobody uses.

Ray Train reserves a run's worker resources in a placement group that its controller actor
creates. A placement group made by a non-detached actor outlives that actor: the GCS frees it
only once the creating job has ended too. Ray Train's ``PlacementGroupCleaner`` is meant to
remove the group of a controller that died, but it learns whether the controller lives from the
State API, which the dashboard serves; an embedded Ray runs without one, so the cleaner logs
``Failed to query Ray Train Controller actor state`` and never acts. A controller that dies
before tearing its worker group down (its owner, the Tune trial actor, stopped first; a crash)
therefore keeps its CPUs reserved for the rest of the sweep, and every trial that needs them
waits forever.

The guard reads the placement-group table from the GCS, which works without the dashboard.
When no trial has started, reported or finished for :data:`STALL_S` seconds, it removes every
placement group of this job whose creating actor is dead (nothing can use it any more: the
actors placed in it died with their owner) and says so; if a removal fails it asks the sweep to
stop, with the reason.

A stall can also have live owners: a worker group that never finishes starting, a collective
that never returns, resources that another job on the cluster holds. Nothing is released then
(a live controller may still be about to use its group), but the user is told what waits and
for what (:func:`describe_wait`: the waiting and the held groups, the cluster's free
resources), every :data:`REPORT_EVERY_S` seconds while it lasts; and after
``resources.stall_timeout_s`` seconds without any trial event the guard stops the sweep with
that description, so that a rerun can resume. Either way the user reads why, instead of watching
a sweep that never ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: Seconds without any trial event (start, report, finish) after which the guard inspects the
#: placement groups. A finished run's group is normally gone within seconds; a minute leaves room
#: for a loaded machine and for Ray Train's own cleaner, where it works, to act first.
STALL_S = 60.0

#: How often, at most, a stalled sweep re-reads the placement-group table.
CHECK_EVERY_S = 5.0

#: How often a stall in which trials wait for resources is described to the user.
REPORT_EVERY_S = 300.0


@dataclass(frozen=True)
class JobGroup:
    """A placement group of this job that has not been removed."""

    group_id: str  # hex, as `ray.util.placement_group_table` keys it
    state: str  # CREATED (resources held) or PENDING/RESCHEDULING (waiting to be placed)
    resources: dict[str, float]  # summed over its bundles
    orphaned: bool  # its creating actor is dead: nothing can use the group any more

    @property
    def waiting(self) -> bool:
        return self.state != "CREATED"

    def describe(self) -> str:
        return f"{self.group_id} ({self.state}, {_amounts(self.resources)})"


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items()) if not k.startswith("node:")) or "nothing"


def describe_wait(groups: Iterable[JobGroup], free: dict[str, float] | None, total: dict[str, float] | None) -> str:
    """What a stalled sweep waits for, in one sentence: the groups that wait to be placed and
    what each needs, the groups that hold resources, and the cluster's free/total resources."""
    groups = list(groups)
    waiting = [g for g in groups if g.waiting]
    held = [g for g in groups if not g.waiting]
    parts = []
    if waiting:
        parts.append(f"{len(waiting)} placement group(s) wait to be placed: " + "; ".join(g.describe() for g in waiting))
    else:
        parts.append("no placement group waits for resources (the running trials are silent, not blocked)")
    if held:
        parts.append(f"{len(held)} hold resources: " + "; ".join(g.describe() for g in held))
    if free is not None and total is not None:
        names = sorted(k for k in total if k in ("CPU", "GPU") and total[k] > 0)
        parts.append("the cluster has " + ", ".join(f"{free.get(k, 0.0):g} of {total[k]:g} {k}" for k in names) + " free")
    return "; ".join(parts)


def cluster_resources() -> tuple[dict[str, float], dict[str, float]]:
    """The connected cluster's free and total resources (from the GCS; no dashboard needed)."""
    import ray

    return ray.available_resources(), ray.cluster_resources()


def _group_table() -> list:
    """The GCS's placement-group records (protobuf ``PlacementGroupTableData``).

    ``ray.util.placement_group_table`` drops the creator fields this guard needs, so the records
    are read through the same GCS accessor it uses.
    """
    from ray._private.state import state as gcs_state
    from ray.core.generated import gcs_pb2

    accessor = gcs_state._connect_and_get_accessor()
    return [gcs_pb2.PlacementGroupTableData.FromString(raw) for raw in accessor.get_placement_group_table()]


def job_groups(records: Iterable | None = None) -> list[JobGroup]:
    """Placement groups of the current job that are not removed, with whether their creating
    actor is dead (``orphaned``).

    Groups the driver itself created (Tune's trial reservations) have no creating actor and are
    never orphaned; detached groups and groups of other jobs sharing the cluster are not listed.
    """
    import ray
    from ray.core.generated import gcs_pb2

    data = gcs_pb2.PlacementGroupTableData
    job = ray.get_runtime_context().get_job_id()
    nil_actor = ray.ActorID.nil().binary()
    found = []
    for rec in _group_table() if records is None else records:
        if rec.state == data.REMOVED or rec.is_detached or rec.creator_job_id.hex() != job:
            continue
        total: dict[str, float] = {}
        for bundle in rec.bundles:
            for name, amount in bundle.unit_resources.items():
                total[name] = total.get(name, 0.0) + amount
        orphaned = bool(rec.creator_actor_dead) and rec.creator_actor_id not in (b"", nil_actor)
        found.append(JobGroup(rec.placement_group_id.hex(), data.PlacementGroupState.Name(rec.state), total, orphaned))
    return found


def orphaned_groups(records: Iterable | None = None) -> list[JobGroup]:
    """The job's placement groups whose creating actor is dead but which were not removed."""
    return [g for g in job_groups(records) if g.orphaned]


def remove_groups(groups: Iterable[JobGroup]) -> None:
    """Remove the groups through the GCS (``ray.util.remove_placement_group``)."""
    from ray import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for group in groups:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group.group_id))))


@dataclass
class StallGuard:
    """Watches a sweep for stalls (see the module docstring): releases dead runs' placement
    groups, describes what a stalled sweep waits for, and gives up after ``timeout_s``.

    Call :meth:`progressed` on every trial event and :meth:`check` often (Tune's loop does, a few
    times a second); ``check`` reads the cluster at most every ``check_every_s`` seconds and only
    after ``stall_s`` seconds without progress (or ``timeout_s``, if that is shorter). ``notify``
    receives every message for the user; ``failure`` is set when the sweep should stop.
    ``timeout_s`` None never gives up.
    """

    notify: Callable[[str], None]
    stall_s: float = STALL_S
    check_every_s: float = CHECK_EVERY_S
    report_every_s: float = REPORT_EVERY_S
    timeout_s: float | None = None
    find: Callable[[], list[JobGroup]] = job_groups
    release: Callable[[list[JobGroup]], None] = remove_groups
    resources: Callable[[], tuple[dict[str, float], dict[str, float]]] = cluster_resources
    clock: Callable[[], float] = time.monotonic
    failure: str | None = None
    removed: list[JobGroup] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._last_progress = self.clock()
        self._last_check = float("-inf")
        self._last_report = float("-inf")

    def progressed(self) -> None:
        self._last_progress = self.clock()
        self._last_report = float("-inf")  # a later stall is described afresh

    def check(self) -> None:
        now = self.clock()
        idle = now - self._last_progress
        # A timeout shorter than the inspection delay is honoured at its own time (else a
        # stall_timeout_s of 10 would act only after stall_s = 60).
        first_look = self.stall_s if self.timeout_s is None else min(self.stall_s, self.timeout_s)
        if self.failure is not None or idle < first_look or now - self._last_check < self.check_every_s:
            return
        self._last_check = now
        groups = self.find()
        orphans = [g for g in groups if g.orphaned]
        if orphans:
            self._release(orphans, idle, now)
        elif self.timeout_s is not None and idle >= self.timeout_s:
            self.failure = (
                f"no trial started, reported or finished for {idle:.0f} s (resources.stall_timeout_s: "
                f"{self.timeout_s:g}); {self._wait(groups)}; stopping the sweep. Rerun it to resume "
                f"(finished trials are kept, unfinished ones continue from their last checkpoint)"
            )
            self.notify(self.failure)
        elif any(g.waiting for g in groups) and now - self._last_report >= self.report_every_s:
            self._last_report = now
            limit = f"; the sweep stops after {self.timeout_s:g} s" if self.timeout_s is not None else ""
            self.notify(f"no trial progressed for {idle:.0f} s: {self._wait(groups)}{limit}")

    def _wait(self, groups: list[JobGroup]) -> str:
        try:
            free, total = self.resources()
        except Exception:  # noqa: BLE001 - a description without the totals is still a description
            free = total = None
        return describe_wait(groups, free, total)

    def _release(self, groups: list[JobGroup], idle: float, now: float) -> None:
        names = "; ".join(g.describe() for g in groups)
        try:
            self.release(groups)
        except Exception as exc:  # noqa: BLE001 - any failure means the sweep cannot go on
            self.failure = (
                f"no trial progressed for {idle:.0f} s while {len(groups)} placement group(s) of finished or "
                f"dead Ray Train runs held resources ({names}), and removing them failed "
                f"({type(exc).__name__}: {exc}); stopping the sweep. Rerun it to resume"
            )
            self.notify(self.failure)
            return
        self.removed.extend(groups)
        self.notify(
            f"no trial progressed for {idle:.0f} s while {len(groups)} placement group(s) of finished or dead "
            f"Ray Train runs held resources: {names}. Removed them so that waiting trials can start"
        )
        self._last_progress = now  # the release is progress: a further stall is measured afresh
