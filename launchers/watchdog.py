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
stop, with the reason. Either way the user reads why, instead of watching a sweep that never ends.
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


@dataclass(frozen=True)
class OrphanedGroup:
    """A placement group whose creating actor is dead but which still reserves resources."""

    group_id: str  # hex, as `ray.util.placement_group_table` keys it
    state: str  # CREATED (resources held) or PENDING/RESCHEDULING (would take them when placed)
    resources: dict[str, float]  # summed over its bundles

    def describe(self) -> str:
        amount = ", ".join(f"{v:g} {k}" for k, v in sorted(self.resources.items()))
        return f"{self.group_id} ({self.state}, {amount})"


def _group_table() -> list:
    """The GCS's placement-group records (protobuf ``PlacementGroupTableData``).

    ``ray.util.placement_group_table`` drops the creator fields this guard needs, so the records
    are read through the same GCS accessor it uses.
    """
    from ray._private.state import state as gcs_state
    from ray.core.generated import gcs_pb2

    accessor = gcs_state._connect_and_get_accessor()
    return [gcs_pb2.PlacementGroupTableData.FromString(raw) for raw in accessor.get_placement_group_table()]


def orphaned_groups(records: Iterable | None = None) -> list[OrphanedGroup]:
    """Placement groups of the current job, created by an actor that is now dead, not removed.

    Groups the driver itself created (Tune's trial reservations) have no creating actor and are
    never listed, nor are detached groups or groups of other jobs sharing the cluster.
    """
    import ray
    from ray.core.generated import gcs_pb2

    data = gcs_pb2.PlacementGroupTableData
    job = ray.get_runtime_context().get_job_id()
    nil_actor = ray.ActorID.nil().binary()
    found = []
    for rec in _group_table() if records is None else records:
        if (rec.state == data.REMOVED or rec.is_detached or not rec.creator_actor_dead
                or rec.creator_actor_id in (b"", nil_actor) or rec.creator_job_id.hex() != job):
            continue
        total: dict[str, float] = {}
        for bundle in rec.bundles:
            for name, amount in bundle.unit_resources.items():
                total[name] = total.get(name, 0.0) + amount
        found.append(OrphanedGroup(rec.placement_group_id.hex(), data.PlacementGroupState.Name(rec.state), total))
    return found


def remove_groups(groups: Iterable[OrphanedGroup]) -> None:
    """Remove the groups through the GCS (``ray.util.remove_placement_group``)."""
    from ray import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for group in groups:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group.group_id))))


@dataclass
class StallGuard:
    """Releases dead runs' placement groups once a sweep has stalled (see the module docstring).

    Call :meth:`progressed` on every trial event and :meth:`check` often (Tune's loop does, a few
    times a second); ``check`` reads the cluster at most every ``check_every_s`` seconds and only
    after ``stall_s`` seconds without progress. ``notify`` receives every message for the user;
    ``failure`` is set when the sweep should stop.
    """

    notify: Callable[[str], None]
    stall_s: float = STALL_S
    check_every_s: float = CHECK_EVERY_S
    find: Callable[[], list[OrphanedGroup]] = orphaned_groups
    release: Callable[[list[OrphanedGroup]], None] = remove_groups
    clock: Callable[[], float] = time.monotonic
    failure: str | None = None
    removed: list[OrphanedGroup] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._last_progress = self.clock()
        self._last_check = float("-inf")

    def progressed(self) -> None:
        self._last_progress = self.clock()

    def check(self) -> None:
        now = self.clock()
        idle = now - self._last_progress
        if self.failure is not None or idle < self.stall_s or now - self._last_check < self.check_every_s:
            return
        self._last_check = now
        groups = self.find()
        if not groups:
            return
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
