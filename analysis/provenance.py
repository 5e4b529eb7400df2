"""Which code, and how alike a machine, produced a set of trials: the lines every report states
about its provenance.

A comparison is only as trustworthy as the claim that every trial ran the same code. Each trial
records ``runs.git_commit`` (``bench.metadata.git_commit``: the commit of the specbench tree,
``+dirty`` when tracked files had uncommitted changes, ``unknown`` outside a checkout). A report
built from trials at several commits, or from a dirty tree, may compare an optimizer before a fix
with another after it; the report says so in its header instead of leaving it to the reader to
check the Parquet.

The same holds for the machine. A comparison resumed across sessions, or run beside other work,
may time one optimizer on a fast host and another on a slow one: final losses and accuracies do
not care, but wall-clock, tokens/s and time-to-target columns then compare machines, not
optimizers. Each trial records the kind of machine it ran on (``machine_type`` in
``runs.hardware_json``: CPU brand, vendor family and model, SIMD width, GPUs) and the peak rate
it measured (``runs.peak_flops_per_s``, ``bench.throughput``: a float32 matmul timed at the
trial's start on CPU, the datasheet rate on a GPU). The report says when the trials name more
than one kind of machine, or, for trials that recorded none, when their peaks disagree by more
than :data:`SPEED_SPREAD_LIMIT`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

#: Suffix ``bench.metadata.git_commit`` appends when tracked files had uncommitted changes.
DIRTY = "+dirty"
#: What ``bench.metadata.git_commit`` records outside a git checkout.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Provenance:
    """The commits a set of trials ran at.

    Attributes:
        trials: number of trials (runs rows) considered.
        commits: trials per recorded commit string, most frequent first.
    """

    trials: int
    commits: dict[str, int]

    @property
    def dirty(self) -> int:
        """Trials that ran with uncommitted changes to tracked files."""
        return sum(n for c, n in self.commits.items() if c.endswith(DIRTY))

    @property
    def unknown(self) -> int:
        """Trials whose commit is not known (run from an installed package, or not recorded)."""
        return sum(n for c, n in self.commits.items() if c == UNKNOWN)

    @property
    def clean_single_commit(self) -> bool:
        """True when every trial ran at one known commit with no uncommitted changes."""
        return len(self.commits) == 1 and self.dirty == 0 and self.unknown == 0


def provenance(runs: pd.DataFrame) -> Provenance:
    """:class:`Provenance` of the ``runs`` table (missing or null ``git_commit`` counts as unknown)."""
    if runs.empty:
        return Provenance(0, {})
    commits = runs["git_commit"] if "git_commit" in runs else pd.Series(UNKNOWN, index=runs.index)
    counts = commits.fillna(UNKNOWN).astype(str).value_counts()
    return Provenance(len(runs), {str(c): int(n) for c, n in counts.items()})


def _short(commit: str) -> str:
    sha, dirty = (commit[: -len(DIRTY)], DIRTY) if commit.endswith(DIRTY) else (commit, "")
    return (sha if sha == UNKNOWN else sha[:10]) + dirty


def provenance_line(runs: pd.DataFrame) -> str:
    """One Markdown sentence: the commit every trial ran at, or a warning naming how the trials
    disagree (several commits, uncommitted changes, unknown code)."""
    p = provenance(runs)
    if p.trials == 0:
        return "code: no trials recorded"
    if p.clean_single_commit:
        return f"code: all {p.trials} trials ran at commit `{_short(next(iter(p.commits)))}` (clean tree)"
    listed = ", ".join(f"`{_short(c)}` × {n}" for c, n in p.commits.items())
    problems = []
    if len(p.commits) > 1:
        problems.append(f"{len(p.commits)} different code versions")
    if p.dirty:
        problems.append(f"{p.dirty} with uncommitted changes")
    if p.unknown:
        problems.append(f"{p.unknown} from code of unknown commit")
    return (
        f"**code: NOT one clean commit** ({'; '.join(problems)}): {listed}. Trials of one comparison "
        "should run at one clean commit; re-run the sweep from a clean checkout (`--force-new`) before "
        "quoting its numbers"
    )


#: Largest ratio of the trials' measured peaks (highest over lowest) that still counts as one
#: machine when the trials did not record what machine they ran on. The 70 trials of the vision
#: comparison at 9d7e695, on one 2-core host over two sessions, two at a time, spanned 88–113
#: GFLOP/s (1.29×); a host three times slower lies well past 1.5×. Load moves a peak too: a
#: trial that times its matmul while its neighbour trains on a core that shares the physical
#: one can record half its machine's rate, which is why the recorded machine type comes first.
SPEED_SPREAD_LIMIT = 1.5

#: The key of ``runs.hardware_json`` that names the kind of machine (``bench.metadata.machine_type``:
#: CPU brand, vendor family and model, SIMD width, and the model of the GPU the trial saw).
MACHINE_TYPE = "machine_type"


def machine_types(runs: pd.DataFrame) -> pd.Series:
    """Each trial's recorded machine type (None where its ``hardware_json`` names none: trials
    written before it was recorded)."""
    if "hardware_json" not in runs:
        return pd.Series([None] * len(runs), index=runs.index, dtype=object)

    def one(text: object) -> str | None:
        try:
            value = json.loads(text).get(MACHINE_TYPE) if isinstance(text, str) else None
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value != "unknown" else None

    return runs["hardware_json"].map(one)


def machine_line(runs: pd.DataFrame) -> str:
    """One Markdown sentence on the machines behind the trials: their recorded machine types,
    and the range of their measured peak rates.

    Warns when the trials name more than one machine type, or, where none is recorded, when
    the peaks span more than :data:`SPEED_SPREAD_LIMIT` (empty when nothing was recorded). With
    one machine type for every trial a wider peak range is load, and is said to be.
    """
    if runs.empty:
        return ""
    types = machine_types(runs)
    known = types.dropna()
    peaks = pd.to_numeric(runs["peak_flops_per_s"], errors="coerce") if "peak_flops_per_s" in runs else pd.Series()
    peaks = peaks[peaks > 0].dropna()
    span = ""
    if not peaks.empty:
        low, high = float(peaks.min()), float(peaks.max())
        span = f"measured peak {low / 1e9:.3g}–{high / 1e9:.3g} GFLOP/s over {len(peaks)} trials"
        spread = high / low
    if known.nunique() > 1:
        counts = "; ".join(f"{name} × {n}" for name, n in known.value_counts().items())
        unrecorded = f"; {len(types) - len(known)} unrecorded" if len(known) < len(types) else ""
        return (
            f"**machine NOT uniform**: the trials ran on {known.nunique()} kinds of machine ({counts}"
            f"{unrecorded}){', ' + span if span else ''}: wall-clock, tokens/s and time-to-target "
            "compare machines as much as optimizers; losses and accuracies are unaffected"
        )
    if len(known) == len(types):  # one machine type, recorded by every trial
        text = f"machine: every trial on {known.iloc[0]}"
        if span:
            text += f"; {span}"
            if spread > SPEED_SPREAD_LIMIT:
                text += (f" ({spread:.1f}×: load, not machines — a trial times its matmul while its "
                         "neighbour trains)")
        return text
    if not span:
        return ""
    partly = (f" ({len(known)} of {len(types)} trials name their machine, all {known.iloc[0]})"
              if len(known) else "")
    if spread <= SPEED_SPREAD_LIMIT:
        return f"machine: {span}{partly} (within {SPEED_SPREAD_LIMIT}×: timings compare like with like)"
    return (
        f"**machine speed NOT uniform**: {span} ({spread:.1f}×, more than {SPEED_SPREAD_LIMIT}×){partly}: "
        "the trials ran on unlike machines or under unlike load, so wall-clock, tokens/s and "
        "time-to-target compare machines as much as optimizers; losses and accuracies are unaffected"
    )
