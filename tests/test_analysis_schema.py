"""Results schema discipline: the writer's declaration and the reader's agree, a file of another
version is refused with what to do, an old file is upgraded only when nothing has to be guessed,
every result file goes through one atomic writer, and the same reports come out of per-trial,
consolidated and committed results.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analysis_fixtures import curvature_rows, run_row, write_table

from analysis import build_report
from analysis.claims import verify
from analysis.curvature import LAYER_FITS_COLUMNS
from analysis.dataset import (
    METADATA_KEY,
    SCHEMA_VERSION,
    SchemaVersionError,
    load_table,
    locate,
    trial_states,
)
from bench.results import schema
from bench.results.upgrade import UpgradeError, upgrade_file
from bench.results.upgrade import main as upgrade_main
from bench.results.writer import replace_atomically, to_table, write_atomic_text
from launchers.derived_tables import consolidate, write_layer_fits

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "analysis" / "reports"


def _sweep(root: Path, name: str = "s") -> Path:
    """Two optimizers × two seeds, steps logged, curvature probed in one trial."""
    for opt, base in (("adamw", 0.80), ("muon", 0.90)):
        for seed in (0, 1):
            tid = f"{opt}-{seed}"
            tdir = root / name / "trials" / tid
            acc = [base - 0.2, base - 0.1, base + 0.01 * seed]
            write_table(tdir / "runs.parquet", [run_row(
                sweep_name=name, trial_id=tid, optimizer=opt, optimizer_label=opt, optimizer_entry=opt,
                seed_index=seed, final_eval_metric=acc[-1], best_eval_metric=acc[-1], test_metric=acc[-1] - 0.01,
                wall_time_s=30.0)])  # fmt: skip
            write_table(tdir / "steps.parquet", [
                {"trial_id": tid, "step": s, "wall_time_s": 10.0 * s, "train_loss": 1.0 / s, "eval_metric": a}
                for s, a in zip((1, 2, 3), acc, strict=True)])  # fmt: skip
    write_table(root / name / "trials" / "adamw-0" / "curvature.parquet", curvature_rows("adamw-0"))
    return root / name


def _relabel(path: Path, version: int) -> None:
    """Rewrite a file as if written at ``version`` (metadata and column)."""
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("schema_version"), "schema_version",
                             pa.array([version] * table.num_rows, pa.int32()))
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: str(version).encode()}), path)


# ----------------------------------------------------------------------------- declarations
def test_layer_fits_is_declared_as_the_analysis_computes_it(tmp_path):
    ids = ["sweep_name", "trial_id", "step", "layer", "layer_type", "depth", "module", "shape_m", "shape_n"]
    assert schema.LAYER_FITS.names == ["schema_version", *ids, *LAYER_FITS_COLUMNS]
    sweep = _sweep(tmp_path)
    (path,) = write_layer_fits(sweep)
    written = pq.read_schema(path)
    assert written.metadata[METADATA_KEY] == str(SCHEMA_VERSION).encode()
    for field in schema.LAYER_FITS:  # every declared column, typed as declared
        assert written.field(field.name).type == field.type, field.name
    fits = pq.read_table(path).to_pandas()
    assert (fits["schema_version"] == SCHEMA_VERSION).all() and (fits["sweep_name"] == "s").all()
    assert fits["alpha"].to_numpy() == pytest.approx(2.0)


def test_refitting_leaves_a_file_alone_unless_its_fits_changed_beyond_noise(tmp_path):
    sweep = _sweep(tmp_path)
    (path,) = write_layer_fits(sweep)
    table = pq.read_table(path)
    col = table.column_names.index("alpha")

    def store(factor: float) -> bytes:  # the file as another process's refit could have left it
        alpha = pa.array([a * factor for a in table.column("alpha").to_pylist()], pa.float64())
        pq.write_table(table.set_column(col, "alpha", alpha), path)
        return path.read_bytes()

    ulp_noise = store(1.0 + 4e-16)
    assert write_layer_fits(sweep) == [path]
    assert path.read_bytes() == ulp_noise  # untouched: a repeated report changes no committed file
    store(1.0 + 1e-9)  # a real change: refitted and rewritten
    write_layer_fits(sweep)
    assert pq.read_table(path).column("alpha").to_pylist() == table.column("alpha").to_pylist()
    _relabel(path, SCHEMA_VERSION - 1)  # another version: rewritten even though the values agree
    write_layer_fits(sweep)
    assert pq.read_schema(path).metadata[METADATA_KEY] == str(SCHEMA_VERSION).encode()


def test_a_renamed_sweep_directory_keeps_the_name_its_sweep_recorded(tmp_path):
    # A carried run (results/<sweep> copied to analysis/reports/.../run-<commit>) keeps its
    # sweep.json; rows from files without a sweep_name column (steps, curvature, the derived
    # layer_fits) must name the same sweep as the runs rows, or joins on sweep_name lose them.
    sweep = _sweep(tmp_path)
    carried = sweep.rename(tmp_path / "run-abc1234")
    write_atomic_text('{"name": "s", "trials": []}', carried / "sweep.json")
    (path,) = write_layer_fits(carried)
    assert set(pq.read_table(path).column("sweep_name").to_pylist()) == {"s"}
    for table in ("runs", "steps", "curvature"):
        assert set(load_table(carried, table)["sweep_name"]) == {"s"}, table
    # No record: the directory's name is all there is.
    (carried / "sweep.json").unlink()
    assert set(load_table(carried, "steps")["sweep_name"]) == {"run-abc1234"}


def test_every_file_goes_through_one_atomic_writer(tmp_path):
    target = tmp_path / "d" / "runs.parquet"

    def crash(tmp: str) -> None:
        Path(tmp).write_text("half a file")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        replace_atomically(target, crash)
    assert not target.exists() and os.listdir(target.parent) == []  # no half file, no temporary left
    write_atomic_text("{}", tmp_path / "d" / "sweep.json")
    assert (tmp_path / "d" / "sweep.json").read_text() == "{}"
    assert os.listdir(target.parent) == ["sweep.json"]


# ------------------------------------------------------------------------------ versions
def _v1_runs(tmp_path: Path, **drop_or_set) -> Path:
    path = tmp_path / "old" / "trials" / "t0" / "runs.parquet"
    row = {k: v for k, v in run_row(sweep_name="old", trial_id="t0", test_metric=0.9).items()
           if k not in drop_or_set.get("drop", ())}
    table = to_table("runs", [row])
    keep = [c for c in table.column_names if c not in drop_or_set.get("drop", ()) and c != "median_mfu"]
    path.parent.mkdir(parents=True)
    pq.write_table(table.select(keep), path)
    _relabel(path, 1)
    return path


def test_a_version_1_file_is_refused_then_upgraded(tmp_path):
    path = _v1_runs(tmp_path)
    with pytest.raises(SchemaVersionError, match=f"{path}.*schema version 1.*python -m bench.results.upgrade"):
        load_table(tmp_path / "old", "runs")
    assert upgrade_file(path) is True
    runs = load_table(tmp_path / "old", "runs")
    assert runs.loc[0, "test_metric"] == 0.9 and runs.loc[0, "optimizer_entry"] == "adamw"
    assert "median_mfu" in runs.columns and math.isnan(runs.loc[0, "median_mfu"])  # declared: null, not guessed
    assert pq.read_schema(path).metadata[METADATA_KEY] == str(SCHEMA_VERSION).encode()
    assert upgrade_file(path) is False  # already current: untouched


def test_version_2_probes_were_mode_full(tmp_path):
    """2 → 3 writes the one probe mode that existed, ``full``, into curvature rows and the
    ``curvature_probe`` profile rows only; a column version 2 did not measure stays null."""
    curv = tmp_path / "t" / "curvature.parquet"
    prof = tmp_path / "t" / "profile.parquet"
    curv.parent.mkdir()
    for path, name, rows in ((curv, "curvature", curvature_rows("t0", layers=1, k=3)),
                             (prof, "profile", [{"op": "curvature_probe", "seconds": 1.0},
                                                {"op": "spectral_step", "seconds": 2.0}])):
        table = to_table(name, rows)
        pq.write_table(table.drop_columns([c for c in table.column_names if c in ("probe_mode", "alpha_lo")]), path)
        _relabel(path, 2)
        assert upgrade_file(path) is True
    assert pq.read_table(curv)["probe_mode"].to_pylist() == ["full"] * 3
    assert pq.read_table(curv)["alpha_lo"].null_count == 3
    assert pq.read_table(prof)["probe_mode"].to_pylist() == ["full", None]


def test_the_upgrade_refuses_to_guess(tmp_path, capsys):
    path = _v1_runs(tmp_path, drop=("optimizer_entry",))
    with pytest.raises(UpgradeError, match=r"runs\.parquet: the runs table lacks optimizer_entry.*--set"):
        upgrade_file(path)
    assert upgrade_main([str(path)]) == 2 and "lacks optimizer_entry" in capsys.readouterr().err
    with pytest.raises(UpgradeError, match="already holds values in model"):
        upgrade_file(path, fill={"optimizer_entry": "adamw", "model": "other"})
    # What the user knows (one unlabelled entry in the sweep's config) is stated, not inferred.
    assert upgrade_main([str(path), "--set", "optimizer_entry=adamw"]) == 0
    assert load_table(tmp_path / "old", "runs").loc[0, "optimizer_entry"] == "adamw"
    _relabel(path, SCHEMA_VERSION + 1)
    with pytest.raises(UpgradeError, match=f"schema version {SCHEMA_VERSION + 1} cannot be upgraded"):
        upgrade_file(path)
    unlabelled = tmp_path / "runs.parquet"
    pq.write_table(pa.table({"trial_id": ["t"]}), unlabelled)
    with pytest.raises(UpgradeError, match="no schema version"):
        upgrade_file(unlabelled)
    with pytest.raises(UpgradeError, match="pass --table"):
        upgrade_file(tmp_path / "old" / "trials" / "t0" / "runs.parquet", table="nope")


def test_committed_result_files_are_at_the_current_version():
    files = [p for p in REPORTS.rglob("*.parquet") if METADATA_KEY in (pq.read_schema(p).metadata or {})]
    assert len(files) >= 9  # lm-question-cpu/data (5), resnet18-probes-cpu (2), scaling-cpu (2)
    for path in files:
        assert pq.read_schema(path).metadata[METADATA_KEY] == str(SCHEMA_VERSION).encode(), path


# --------------------------------------------------------------------------- layouts
def test_report_and_verify_read_a_consolidated_directory(tmp_path):
    sweep = _sweep(tmp_path / "results")
    write_layer_fits(sweep)
    per_trial = build_report(sweep, tmp_path / "a")
    written = consolidate(sweep, tmp_path / "merged")
    assert {t: n for t, (_, n) in written.items()} == {"runs": 4, "steps": 12, "curvature": 100, "layer_fits": 5}
    assert locate(tmp_path / "merged").tables_dir == (tmp_path / "merged").resolve()

    merged = build_report(tmp_path / "merged", tmp_path / "b")
    pd.testing.assert_frame_equal(merged.table, per_trial.table)
    assert merged.state_counts == per_trial.state_counts == {"completed": 4}
    assert set(trial_states(tmp_path / "merged")["trial_path"]) == {f"s/trials/{t}" for t in
                                                                      ("adamw-0", "adamw-1", "muon-0", "muon-1")}
    assert merged.comparison is not None and merged.curvature is not None
    assert [r.value for r in verify(tmp_path / "merged")] == pytest.approx(
        [r.value for r in verify(sweep)], nan_ok=True)

    # A sweep whose trial directories are gone still reports from its consolidated/ folder, and so
    # does the command line (exit 0, nothing to fit into per-trial files).
    alone = tmp_path / "alone"
    consolidate(sweep, alone / "consolidated")
    cli = subprocess.run([sys.executable, "-m", "launchers.cli", "report", str(alone), "--out", str(tmp_path / "c")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "muon" in (tmp_path / "c" / "report.md").read_text()
    assert verify(alone)[0].value == pytest.approx(2.0)  # conv α of the exact power law


def test_report_and_verify_on_the_committed_data(tmp_path):
    resnet = {r.id: r for r in verify(REPORTS / "resnet18-probes-cpu")}
    assert resnet["conv-alpha-median"].n == 19 and resnet["conv-alpha-median"].value == pytest.approx(1.579, abs=1e-3)
    lm = {r.id: r for r in verify(REPORTS / "lm-question-cpu" / "data")}
    assert lm["lm-mlp-up-alpha"].n == 16 and lm["theorem1-residual"].status == "PASS"
    report = build_report(REPORTS / "resnet18-probes-cpu", tmp_path / "r")
    assert report.curvature is not None and report.state_counts == {"completed": 1}
    runs = load_table(REPORTS / "lm-question-cpu" / "data", "runs")
    assert len(runs) == 16 and runs["trial_path"].is_unique
