"""The stall guard (launchers/watchdog.py): its timing rules on a fake clock, and the real thing
against an embedded Ray: a placement group whose creating actor died is found through the GCS
(no dashboard) and removed, with a message naming it, and nothing else is touched.
The Ray test starts Ray: run it under the shared lock (`flock /tmp/specbench-ray.lock ...`)."""

from __future__ import annotations

import time

import pytest

from launchers.watchdog import OrphanedGroup, StallGuard, orphaned_groups

LEAK = OrphanedGroup("abc123", "CREATED", {"CPU": 0.98})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guard(clock: Clock, groups: list[OrphanedGroup], release=None) -> tuple[StallGuard, list, list]:
    messages: list[str] = []
    released: list[list[OrphanedGroup]] = []
    guard = StallGuard(
        notify=messages.append, stall_s=60, check_every_s=5, clock=clock,
        find=lambda: list(groups), release=release or released.append,
    )
    return guard, messages, released


def test_guard_acts_only_after_the_stall_bound_and_says_what_it_removed():
    clock = Clock()
    guard, messages, released = _guard(clock, [LEAK])
    clock.now = 59
    guard.check()
    assert released == [] and messages == []
    guard.progressed()  # a trial event restarts the count
    clock.now = 110
    guard.check()
    assert released == []
    clock.now = 120
    guard.check()
    assert released == [[LEAK]]
    assert "abc123" in messages[0] and "0.98 CPU" in messages[0] and "Removed" in messages[0]
    assert guard.failure is None and guard.removed == [LEAK]
    clock.now = 130  # the release counted as progress
    guard.check()
    assert len(released) == 1


def test_guard_without_dead_groups_stays_quiet():
    clock = Clock()
    guard, messages, released = _guard(clock, [])
    clock.now = 1000
    guard.check()
    assert messages == [] and released == [] and guard.failure is None


def test_guard_stops_the_sweep_when_removal_fails():
    clock = Clock()

    def refuse(groups):
        raise RuntimeError("GCS unreachable")

    guard, messages, _ = _guard(clock, [LEAK], release=refuse)
    clock.now = 61
    guard.check()
    assert guard.failure is not None
    assert "abc123" in guard.failure and "GCS unreachable" in guard.failure and "stopping" in guard.failure
    assert messages == [guard.failure]


def _available_cpu_settles_at(expected: float, within_s: float = 30) -> bool:
    """Ray's view of free resources is updated asynchronously: wait for it to show ``expected``."""
    import ray

    deadline = time.time() + within_s
    while abs(ray.available_resources().get("CPU", 0) - expected) > 1e-6:
        if time.time() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_dead_creators_group_is_found_and_removed_without_the_dashboard():
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from launchers.ray_runner import _set_single_machine_mode

    _set_single_machine_mode(True)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=100 * 2**20, logging_level="ERROR", log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Creator:  # plays the Ray Train controller: makes a group, then dies without removing it
            def make(self, cpus: float) -> str:
                pg = placement_group([{"CPU": cpus}])
                ray.get(pg.ready(), timeout=60)
                return pg.id.hex()

        dead, alive = Creator.remote(), Creator.remote()
        leaked = ray.get(dead.make.remote(0.75), timeout=120)
        kept = ray.get(alive.make.remote(0.25), timeout=120)
        mine = placement_group([{"CPU": 0.5}])  # the driver's own, like Tune's trial reservations
        ray.get(mine.ready(), timeout=60)
        ray.kill(dead)
        deadline = time.time() + 60  # the GCS marks the creator dead shortly after the kill
        found = orphaned_groups()
        while not found and time.time() < deadline:
            time.sleep(0.5)
            found = orphaned_groups()
        assert [g.group_id for g in found] == [leaked]
        assert found[0].resources == {"CPU": 0.75} and found[0].state == "CREATED"
        assert _available_cpu_settles_at(0.5)  # 2 - 0.75 (the leak) - 0.25 - 0.5

        messages: list[str] = []
        StallGuard(notify=messages.append, stall_s=0, check_every_s=0).check()
        assert len(messages) == 1 and leaked in messages[0]
        assert placement_group_table()[leaked]["state"] == "REMOVED"
        assert placement_group_table()[kept]["state"] == "CREATED"
        assert placement_group_table()[mine.id.hex()]["state"] == "CREATED"
        assert _available_cpu_settles_at(1.25)  # the leak's 0.75 CPU is back
    finally:
        ray.shutdown()
        _set_single_machine_mode(False)
