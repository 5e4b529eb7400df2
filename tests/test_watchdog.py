"""The stall guard (launchers/watchdog.py): its timing rules on a fake clock (release, the
periodic description of a stall with live owners, the stop after ``resources.stall_timeout_s``),
and the real thing against an embedded Ray: a placement group whose creating actor died is found
through the GCS (no dashboard) and removed, with a message naming it, nothing else is touched,
and a group that cannot be placed is described with the cluster's free resources.
The Ray test starts Ray: run it under the shared lock (`flock /tmp/specbench-ray.lock ...`)."""

from __future__ import annotations

import time

import pytest

from launchers.watchdog import JobGroup, StallGuard, job_groups, orphaned_groups

LEAK = JobGroup("abc123", "CREATED", {"CPU": 0.98}, orphaned=True)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guard(clock: Clock, groups: list[JobGroup], release=None) -> tuple[StallGuard, list, list]:
    messages: list[str] = []
    released: list[list[JobGroup]] = []
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


WAITING = JobGroup("def456", "PENDING", {"CPU": 1.2}, orphaned=False)
RUNNING = JobGroup("0a0a0a", "CREATED", {"CPU": 0.6}, orphaned=False)


def _watching(clock: Clock, groups: list[JobGroup], timeout_s: float | None) -> tuple[StallGuard, list, list]:
    messages: list[str] = []
    released: list[list[JobGroup]] = []
    guard = StallGuard(
        notify=messages.append, stall_s=60, check_every_s=5, report_every_s=300, timeout_s=timeout_s,
        clock=clock, find=lambda: list(groups), release=released.append,
        resources=lambda: ({"CPU": 0.8, "GPU": 0.0, "memory": 5e9}, {"CPU": 2.0, "GPU": 0.0, "memory": 8e9}),
    )
    return guard, messages, released


def test_guard_describes_a_stall_with_live_owners_and_never_releases_their_groups():
    clock = Clock()
    guard, messages, released = _watching(clock, [WAITING, RUNNING], timeout_s=None)
    clock.now = 59
    guard.check()
    assert messages == []
    clock.now = 60
    guard.check()
    assert len(messages) == 1
    text = messages[0]
    assert "60 s" in text and "1 placement group(s) wait to be placed: def456 (PENDING, 1.2 CPU)" in text
    assert "1 hold resources: 0a0a0a (CREATED, 0.6 CPU)" in text and "0.8 of 2 CPU free" in text
    assert "GPU" not in text and "stops" not in text  # no GPU in this cluster, no time limit set
    for now in (120, 300, 355):  # described once per REPORT_EVERY_S, not on every check
        clock.now = now
        guard.check()
    assert len(messages) == 1
    clock.now = 360
    guard.check()
    assert len(messages) == 2 and "360 s" in messages[1]
    clock.now = 10**6  # without a limit the guard waits (and says so) for as long as it takes
    guard.check()
    assert guard.failure is None and released == []
    guard.progressed()  # a trial event: the next stall is described afresh, once its bound passes
    clock.now += 60
    guard.check()
    assert len(messages) == 4 and "60 s" in messages[3]


def test_guard_stops_a_sweep_stalled_past_its_timeout_with_what_it_waited_for():
    clock = Clock()
    guard, messages, released = _watching(clock, [WAITING, RUNNING], timeout_s=900)
    clock.now = 60
    guard.check()
    assert "the sweep stops after 900 s" in messages[0] and guard.failure is None
    clock.now = 895  # (checks are at least check_every_s = 5 apart)
    guard.check()
    assert guard.failure is None
    clock.now = 900
    guard.check()
    assert guard.failure is not None and messages[-1] == guard.failure
    assert "900 s (resources.stall_timeout_s: 900)" in guard.failure
    assert "def456 (PENDING, 1.2 CPU)" in guard.failure and "stopping the sweep" in guard.failure
    assert released == []
    said = len(messages)
    clock.now = 2000  # a stopped guard says nothing more
    guard.check()
    assert len(messages) == said


def test_guard_times_out_silent_running_trials_too_and_says_nothing_waits():
    clock = Clock()
    guard, messages, _ = _watching(clock, [RUNNING], timeout_s=600)
    clock.now = 595
    guard.check()
    assert messages == []  # running trials that report rarely are not a stall worth a message
    clock.now = 600
    guard.check()
    assert guard.failure is not None and "no placement group waits for resources" in guard.failure


def test_timeout_releases_orphans_first_and_the_release_restarts_the_count():
    clock = Clock()
    guard, messages, released = _watching(clock, [LEAK, WAITING], timeout_s=100)
    clock.now = 100
    guard.check()
    assert released == [[LEAK]] and guard.failure is None
    clock.now = 195
    guard.check()
    assert guard.failure is None


def test_a_timeout_shorter_than_the_inspection_delay_acts_at_its_own_time():
    # stall_s (60) is when the guard first looks; a user's stall_timeout_s of 20 must not wait 60.
    clock = Clock()
    guard, messages, _ = _watching(clock, [RUNNING], timeout_s=20)
    clock.now = 19
    guard.check()
    assert guard.failure is None and messages == []
    clock.now = 20
    guard.check()
    assert guard.failure is not None and "20 s (resources.stall_timeout_s: 20)" in guard.failure


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

        # A group that cannot be placed while live owners hold the rest: described, not removed.
        blocked = placement_group([{"CPU": 1.5}])
        listed = {g.group_id: g for g in job_groups()}
        assert not listed[kept].orphaned and not listed[mine.id.hex()].orphaned and leaked not in listed
        assert listed[blocked.id.hex()].waiting
        messages.clear()
        StallGuard(notify=messages.append, stall_s=0, check_every_s=0, timeout_s=None).check()
        assert len(messages) == 1, messages
        assert f"{blocked.id.hex()} (PENDING, 1.5 CPU)" in messages[0] and "1.25 of 2 CPU free" in messages[0]
        assert placement_group_table()[kept]["state"] == "CREATED"
    finally:
        ray.shutdown()
        _set_single_machine_mode(False)
