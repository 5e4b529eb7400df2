"""A resumed sweep runs on a machine like the one it started on, or says that it does not.

A comparison that outlasts one working session is resumed, and the machine behind it can change
in between: in this project's own history a vision comparison resumed on a host whose float32
matmul ran at 34 GFLOP/s instead of 106 (a 2017 AVX2 core in place of an AVX-512 one, both
calling themselves "AMD EPYC"), and whose optimizer steps were 4–11× slower. Losses and
accuracies do not care, but wall-clock, tokens/s and time-to-target then compare machines, and
a report built afterwards can only warn (``analysis.provenance.machine_line``). So a resumed
sweep checks first, before anything starts, two things against its finished trials:

- the kind of CPU (``bench.metadata.cpu_type``: brand, vendor family and model, SIMD width),
  which every trial records in ``runs.hardware_json``; it must be the same. Only the CPU: what
  GPUs a process sees depends on what Ray gave it (none to a CPU trial on a GPU machine), so the
  launching process and its trials would disagree on the same machine;
- this machine's float32 matmul peak, measured the way each trial measures its own
  (:func:`bench.throughput.measure_matmul_peak`, with the trials' thread count), against the
  fastest peak the finished trials recorded. The fastest, because a peak is what the hardware
  can do: a trial that measured beside a busy neighbour recorded less than its machine's peak,
  but none recorded more. It must lie within :data:`analysis.provenance.SPEED_SPREAD_LIMIT`,
  either way (the same kind of virtual machine can still be slower: a throttled or shared host).

Otherwise the sweep is refused with what differs, unless the user accepts the mix with
``--allow-other-machine``. Trials that recorded neither (older files) are not compared; GPU
trials record their datasheet rate, not a measured one, so for them only the CPU type is compared.
Only sweeps on the embedded Ray are checked: with ``--address`` the trials run on the cluster's
machines, not on the one that launches them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.provenance import MACHINE_TYPE, SPEED_SPREAD_LIMIT
from bench.throughput import MEASURED_PEAK

#: The key of ``runs.hardware_json`` naming the CPU (``bench.metadata.cpu_type``).
CPU_TYPE = "cpu_type"

#: ``runs.peak_flops_source`` of a peak timed on the trial's own device.
MEASURED = MEASURED_PEAK

#: Independent measurements of this machine's peak; the fastest counts, as in each measurement.
REPEATS = 3


@dataclass(frozen=True)
class Recorded:
    """What the finished trials recorded about their machines."""

    peaks: list[float]  # measured float32 peaks (FLOP/s)
    types: list[str]  # CPU types, one per trial that recorded one

    def __bool__(self) -> bool:
        return bool(self.peaks or self.types)


@dataclass(frozen=True)
class MachineCheck:
    """This machine against the sweep's finished trials."""

    here_type: str
    recorded_types: tuple[str, ...]  # distinct, as recorded
    here: float = math.nan  # FLOP/s; NaN when no finished trial measured a peak
    recorded: float = math.nan  # the fastest peak a finished trial measured
    trials: int = 0  # finished trials that measured one

    @property
    def ratio(self) -> float:
        """How far apart the peaks are, ≥ 1 (faster or slower alike); NaN when not compared."""
        return max(self.here / self.recorded, self.recorded / self.here)

    @property
    def same_type(self) -> bool:
        return all(t == self.here_type for t in self.recorded_types)

    @property
    def alike(self) -> bool:
        return self.same_type and not self.ratio > SPEED_SPREAD_LIMIT

    def describe(self) -> str:
        parts = []
        if not self.same_type:
            parts.append(f"this machine's CPU is {self.here_type}, but the finished trials of this sweep ran on "
                         + "; ".join(self.recorded_types))
        if self.ratio > SPEED_SPREAD_LIMIT:
            parts.append(f"this machine's float32 matmul peak is {self.here / 1e9:.3g} GFLOP/s; the {self.trials} "
                         f"finished trial(s) measured up to {self.recorded / 1e9:.3g} GFLOP/s ({self.ratio:.1f}× "
                         f"apart, more than {SPEED_SPREAD_LIMIT}×)")
        return "; and ".join(parts) or "this machine is like the one the finished trials ran on"


def recorded(sweep_dir: Path, finished: list[str]) -> Recorded:
    """The measured peaks and machine types that the ``finished`` trials of ``sweep_dir`` recorded."""
    peaks: list[float] = []
    types: list[str] = []
    for tid in finished:
        path = sweep_dir / "trials" / tid / "runs.parquet"
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowException):
            continue  # unreadable: nothing to compare
        for row in rows:
            if row.get("peak_flops_source") == MEASURED and (row.get("peak_flops_per_s") or 0) > 0:
                peaks.append(float(row["peak_flops_per_s"]))
            kind = _cpu_type_of(row.get("hardware_json"))
            if kind:
                types.append(kind)
    return Recorded(peaks, types)


def _cpu_type_of(hardware_json: object) -> str | None:
    """The CPU type a runs row recorded; rows written before ``cpu_type`` existed (commit
    c0708ea) have it as the machine type's part before a GPU."""
    try:
        info = json.loads(hardware_json) if isinstance(hardware_json, str) else {}
    except ValueError:
        return None
    kind = info.get(CPU_TYPE) if isinstance(info, dict) else None
    if kind is None and isinstance(info, dict) and isinstance(info.get(MACHINE_TYPE), str):
        kind = info[MACHINE_TYPE].split(" + ")[0]
    return kind if isinstance(kind, str) and kind != "unknown" else None


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
    """Compare this machine with the finished trials' (None when they recorded nothing to compare)."""
    from bench.metadata import cpu_info, cpu_type

    found = recorded(sweep_dir, finished)
    if not found:
        return None
    kinds, here = tuple(dict.fromkeys(found.types)), cpu_type(cpu_info())
    if not found.peaks:
        return MachineCheck(here_type=here, recorded_types=kinds)
    return MachineCheck(here_type=here, recorded_types=kinds,
                        here=this_machine_peak(threads), recorded=max(found.peaks), trials=len(found.peaks))
