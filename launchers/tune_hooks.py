"""What a sweep hooks into Ray Tune's driver loop: trial events for the progress display and the
stall guard (:mod:`launchers.watchdog`), the guard's check on every loop step, and a stopper
that ends the sweep when the guard gives up.

Tune pickles its callbacks and stoppers with the experiment state, so these classes hold no live
objects (a progress display holding locks, the guard): they find them in :data:`LIVE`, set by
:func:`launchers.ray_runner.run_trials` for the duration of one sweep. Defined at module level,
the classes pickle by reference.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from launchers.ray_runner import TrialEvent, short_error
from launchers.watchdog import StallGuard


@dataclass
class Live:
    """The running sweep's event sink, its stall guard, and the trials that ended so far."""

    sink: Callable[[TrialEvent], None]
    guard: StallGuard
    finished: set[str] = field(default_factory=set)

    @classmethod
    def start(cls, sink: Callable[[TrialEvent], None] | None, stall_timeout_s: float | None = None) -> Live:
        """A sink (stderr for the guard's notices when None) and a guard that speaks through it
        and gives up after ``stall_timeout_s`` seconds without a trial event."""
        out = sink or _print_notices
        notify = lambda text: out(TrialEvent("notice", "", {"message": text}))  # noqa: E731
        return cls(out, StallGuard(notify=notify, timeout_s=stall_timeout_s))


LIVE: Live | None = None


def _print_notices(event: TrialEvent) -> None:
    if event.kind == "notice":
        print(f"specbench: {event.metrics['message']}", file=sys.stderr)


class SweepEvents(tune.Callback):
    """Trial events to the sink and the guard; the guard's check after every loop step."""

    def _emit(self, kind: str, trial, result: dict[str, Any] | None = None) -> None:
        if LIVE is None:
            return
        tid = trial.config["trial"]["trial_id"]
        LIVE.guard.progressed()
        if kind in ("complete", "error"):
            LIVE.finished.add(tid)
        LIVE.sink(TrialEvent(kind, tid, dict(result or {})))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._emit("start", trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._emit("result", trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._emit("complete", trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        # Tune wrote the error to the trial's local error file just before this call.
        path = Path(trial.error_file) if trial.error_file else None
        text = path.read_text(errors="replace") if path is not None and path.is_file() else ""
        self._emit("error", trial, {"error": short_error(text)} if text.strip() else None)

    def on_step_end(self, iteration, trials, **info):
        if LIVE is not None:
            LIVE.guard.check()


class GuardStop(tune.Stopper):
    """Stops the whole sweep once the stall guard has given up (``guard.failure`` is set)."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return LIVE is not None and LIVE.guard.failure is not None
