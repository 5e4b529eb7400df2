"""How close the Kronecker estimate α_kron is to the exact α, on probe runs that measured both.

The cheap probe modes (``kronecker``, ``online``; docs/science/quantities.md#probe-modes) give
α_kron = β + φ (Theorem 1 without the χ term, docs/science/fits.md#theorem-1-decomposition) but no
exact α. Where a mode-``full`` run recorded both, :func:`analysis.curvature.kron_accuracy` gives the
per-layer difference α_kron − α and its distribution by layer type; this module writes them as a
report, as measured::

    python -m analysis.kron_accuracy RESULTS [RESULTS ...] --out DIR

Reads only Parquet (each RESULTS a sweep directory or a directory of consolidated tables).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.curvature import attach_run_info, kron_accuracy, load_layer_fits
from analysis.dataset import TRIAL_PATH, load_table, locate
from analysis.tables import frame_grid

BY = ("model", "dataset")


def accuracy_tables(results: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per layer, by layer type) over the latest probe of every trial of every results path."""
    fits = []
    for path in results:
        res = locate(path)
        layer_fits = load_layer_fits(res)
        if not layer_fits.empty:
            fits.append(attach_run_info(layer_fits, load_table(res, "runs")))
    if not fits:
        return kron_accuracy(pd.DataFrame())
    per, by_type = kron_accuracy(pd.concat(fits, ignore_index=True), by=BY)
    return per.drop(columns=[c for c in (TRIAL_PATH,) if c in per.columns]), by_type


def report(results: list[str | Path], out_dir: str | Path) -> str:
    """Write ``kron_accuracy.md`` (and the per-layer table as CSV) into ``out_dir``."""
    per, by_type = accuracy_tables(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per.to_csv(out / "kron_accuracy_layers.csv", index=False)
    lines = ["# α_kron against the exact α (measured)", "",
             f"Sources: {', '.join(str(r) for r in results)}; each trial's latest probe, mode full "
             "(the only mode with both). Difference = α_kron − α, α_kron the decomposition's slope of "
             "log h_kron on log σ (the `kronecker` α source), α the slope of log h (the `exact` source). "
             "`within_interval`: layers whose α_kron lies inside the probe's 95 % bootstrap interval of α, "
             "of those that recorded one.", "",
             frame_grid(by_type, integers={"n"}) if not by_type.empty else "_No layer has both α and α_kron._", "",
             f"Per layer: `kron_accuracy_layers.csv` ({len(per)} layers).", ""]
    text = "\n".join(lines)
    (out / "kron_accuracy.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.kron_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results directories")
    parser.add_argument("--out", required=True, help="report directory")
    args = parser.parse_args(argv)
    missing = [r for r in args.results if not Path(r).exists()]
    if missing:
        print(f"specbench: error: results path {missing[0]} does not exist", file=sys.stderr)
        return 2
    print(report(args.results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
