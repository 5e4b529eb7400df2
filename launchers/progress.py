"""Live progress of a sweep: one bar for the trials (done / running / failed) and one bar per
running trial for its steps. Ray and DeepSpeed internals stay quiet unless ``--verbose``."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from launchers.ray_runner import TrialEvent


class SweepProgress:
    def __init__(self, total: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.counts = {"done": 0, "running": 0, "failed": 0}
        self.overall = self.progress.add_task("trials", total=total, info=self._info())
        self.trial_tasks: dict[str, int] = {}

    def _info(self) -> str:
        c = self.counts
        return f"done {c['done']} · running {c['running']} · failed {c['failed']}"

    def __enter__(self) -> SweepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def handle(self, event: TrialEvent) -> None:
        tid = event.trial_id
        if event.kind == "notice":  # the stall guard speaking (launchers/watchdog.py)
            self.console.log(f"[yellow]{escape(event.metrics['message'])}[/yellow]")
            return
        if event.kind == "start":
            self.counts["running"] += 1
            self.trial_tasks[tid] = self.progress.add_task(f"  {tid}", total=None, info="starting")
        elif event.kind == "result" and tid in self.trial_tasks:
            m = event.metrics
            if "steps" in m:
                loss = m.get("train_loss")
                info = f"loss {loss:.4f}" if isinstance(loss, float) else ""
                self.progress.update(self.trial_tasks[tid], total=m["steps"], completed=m.get("step", 0), info=info)
        elif event.kind in ("complete", "error"):
            self.counts["running"] = max(0, self.counts["running"] - 1)
            self.counts["done" if event.kind == "complete" else "failed"] += 1
            task = self.trial_tasks.pop(tid, None)
            if task is not None:
                self.progress.remove_task(task)
            error = event.metrics.get("error")
            status = "finished" if event.kind == "complete" else "[red]FAILED[/red]" + (
                f": {escape(error)}" if error else "")
            self.console.log(f"trial {tid} {status}")
            self.progress.update(self.overall, advance=1)
        self.progress.update(self.overall, info=self._info())
