"""A resumed sweep runs on a machine like the one it started on, or says that it does not.

A comparison that outlasts one working session is resumed, and the machine behind it can change
in between: in this project's own history a vision comparison resumed on a host whose float32
matmul ran at 34 GFLOP/s instead of 106, and whose optimizer steps were 4–11× slower. Losses
and accuracies do not care, but wall-clock, tokens/s and time-to-target then compare machines,
and a report built afterwards can only warn (``analysis.provenance.machine_line``). So a resumed
sweep checks first, before anything starts: this machine's float32 matmul peak, measured the
way each trial measures its own (:func:`bench.throughput.measure_matmul_peak`, with the trials'
thread count), against the fastest peak the sweep's finished trials recorded. The fastest,
because a peak is what the hardware can do: a trial that measured beside a busy neighbour
recorded less than its machine's peak, but none recorded more. More than
:data:`analysis.provenance.SPEED_SPREAD_LIMIT` apart in either direction, and the sweep is
refused with both numbers, unless the user accepts the mixed machines with
``--allow-other-machine``.

Only trials that measured their peak (CPU trials; a GPU trial records its datasheet rate,
``datasheet:<name>``) and only sweeps on the embedded Ray (with ``--address`` the trials run on
the cluster's machines, not on the one that launches them) are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.provenance import SPEED_SPREAD_LIMIT

#: ``runs.peak_flops_source`` of a peak timed on the trial's own device (``bench.throughput``).
MEASURED = "measured-matmul"

#: Independent measurements of this machine's peak; the fastest counts, as in each measurement.
REPEATS = 3


@dataclass(frozen=True)
class MachineCheck:
    """This machine's peak against the sweep's recorded ones (FLOP/s)."""

    here: float
    recorded: float  # the fastest peak a finished trial measured
    trials: int  # finished trials that measured one

    @property
    def ratio(self) -> float:
        """How far apart, ≥ 1 (faster or slower alike)."""
        return max(self.here / self.recorded, self.recorded / self.here)

    @property
    def alike(self) -> bool:
        return self.ratio <= SPEED_SPREAD_LIMIT

    def describe(self) -> str:
        return (f"this machine's float32 matmul peak is {self.here / 1e9:.3g} GFLOP/s; the {self.trials} "
                f"finished trial(s) of this sweep measured up to {self.recorded / 1e9:.3g} GFLOP/s "
                f"({self.ratio:.1f}× apart, more than {SPEED_SPREAD_LIMIT}×)")


def recorded_peaks(sweep_dir: Path, finished: list[str]) -> list[float]:
    """The peaks that the ``finished`` trials of ``sweep_dir`` measured on their device."""
    peaks = []
    for tid in finished:
        path = sweep_dir / "trials" / tid / "runs.parquet"
        try:
            table = pq.read_table(path, columns=["peak_flops_per_s", "peak_flops_source"])
        except (OSError, KeyError, pa.ArrowException):
            continue  # an older file without the columns, or none: nothing to compare
        for peak, source in zip(table.column("peak_flops_per_s").to_pylist(),
                                table.column("peak_flops_source").to_pylist(), strict=True):
            if source == MEASURED and peak is not None and peak > 0:
                peaks.append(float(peak))
    return peaks


def this_machine_peak(threads: int) -> float:
    """float32 matmul peak here with ``threads`` intra-op threads, as a trial would measure it."""
    import torch

    from bench.throughput import measure_matmul_peak

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return max(measure_matmul_peak(torch.device("cpu")) for _ in range(REPEATS))
    finally:
        torch.set_num_threads(before)


def check(sweep_dir: Path, finished: list[str], threads: int) -> MachineCheck | None:
    """Compare this machine with the finished trials' (None when none measured a peak)."""
    peaks = recorded_peaks(sweep_dir, finished)
    if not peaks:
        return None
    return MachineCheck(here=this_machine_peak(threads), recorded=max(peaks), trials=len(peaks))
