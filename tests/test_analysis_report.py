"""analysis/: loading per-trial Parquet, the optimizer table, plots and the Markdown report.

The fixture writes synthetic per-trial files with the writer's real schema
(``bench.results.schema``), so a column renamed on the writing side breaks these tests instead of
silently producing empty reports. ``analysis`` itself never imports ``bench``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import analysis
from analysis import (
    ResultsNotFound,
    SchemaVersionError,
    build_report,
    load_table,
    optimizer_table,
)
from analysis.dataset import (
    INCOMPLETE,
    METADATA_KEY,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    TABLES,
    ResultsReadError,
    trial_states,
)
from analysis.provenance import SPEED_SPREAD_LIMIT, machine_line, provenance, provenance_line
from analysis.summary import format_mean_std, format_table, t_interval
from bench.results import schema as writer_schema

N_STEPS = 10
EVAL_EVERY = 5
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAILED_ERROR = "RuntimeError: CUDA out of memory | tried to allocate 2.00 GiB"


def _write(
    path: Path,
    rows: list[dict],
    base: pa.Schema,
    version: int = SCHEMA_VERSION,
    extra: dict[str, pa.DataType] | None = None,
) -> None:
    """Write rows with the writer's schema plus extra dynamic columns, labelled ``version``."""
    schema = base
    for name, dtype in (extra or {}).items():
        schema = schema.append(pa.field(name, dtype))
    full = [{**{n: None for n in schema.names}, **row, "schema_version": version} for row in rows]
    schema = schema.with_metadata({METADATA_KEY: str(version).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)


def _runs_row(
    sweep: str, trial_id: str, label: str, seed: int, status: str, workload: dict, rng: np.random.Generator
) -> dict:
    done = status == "completed"
    return {
        "sweep_name": sweep,
        "trial_id": trial_id,
        "optimizer": label.split("-")[0],
        "optimizer_label": label,
        "optimizer_entry": label,
        "tuning_index": -1, "tuning_stage": 0,
        "seed_index": seed,
        "seed": 1000 + seed,
        "git_commit": COMMIT,
        "status": status,
        "error": None if done else FAILED_ERROR,
        "steps_completed": N_STEPS if done else 0,
        "final_train_loss": float(rng.uniform(0.1, 1.0)) if done else None,
        "final_eval_metric": float(rng.uniform(*workload["metric_range"])) if done else None,
        "best_eval_metric": float(rng.uniform(*workload["metric_range"])) if done else None,
        "test_metric": float(rng.uniform(*workload["metric_range"])) if done else None,
        "wall_time_s": float(rng.uniform(10, 20)) if done else None,
        "median_step_time_s": float(rng.uniform(0.01, 0.02)) if done else None,
        **{k: v for k, v in workload.items() if k != "metric_range"},
    }


def _steps_rows(trial_id: str, rng: np.random.Generator) -> list[dict]:
    return [
        {
            "trial_id": trial_id,
            "step": s,
            "wall_time_s": 0.1 * s + float(rng.uniform(0, 0.01)),
            "train_loss": float(2.0 / s + rng.uniform(0, 0.05)),
            "eval_metric": float(rng.uniform(0.5, 0.9)) if s % EVAL_EVERY == 0 else None,
            "opt_spectral_time_s": 0.001 * s,
        }
        for s in range(1, N_STEPS + 1)
    ]


VISION = {
    "model": "builtin:cnn",
    "dataset": "sklearn:digits",
    "task": "classification",
    "metric_name": "accuracy",
    "metric_goal": "max",
    "metric_range": (0.8, 0.99),
}
LM = {
    "model": "builtin:transformer",
    "dataset": "builtin:text",
    "task": "lm",
    "metric_name": "perplexity",
    "metric_goal": "min",
    "metric_range": (5.0, 50.0),
}


def _write_sweep(root: Path, sweep: str, workload: dict, seeds: int, seed: int) -> None:
    """2 optimizers × ``seeds`` completed trials, one failed trial without steps and one trial
    with steps but no runs row (still running)."""
    rng = np.random.default_rng(seed)
    trials = root / sweep / "trials"
    opt_extra = {"opt_spectral_time_s": pa.float64()}
    for label in ("adamw", "spectral_newton"):
        for s in range(seeds):
            tid = f"{label}-s{s}"
            run = _runs_row(sweep, tid, label, s, "completed", workload, rng)
            run["config.lr"] = 0.01 * (s + 1)
            _write(
                trials / tid / "runs.parquet", [run], writer_schema.RUNS, extra={"config.lr": pa.float64()}
            )
            steps = _steps_rows(tid, rng)
            if label == "adamw":  # only spectral_newton logs its own step metrics
                for r in steps:
                    del r["opt_spectral_time_s"]
            _write(
                trials / tid / "steps.parquet",
                steps,
                writer_schema.STEPS,
                extra=opt_extra if label != "adamw" else None,
            )
    failed = _runs_row(sweep, "spectral_newton-failed", "spectral_newton", seeds, "failed", workload, rng)
    _write(trials / "spectral_newton-failed" / "runs.parquet", [failed], writer_schema.RUNS)
    _write(
        trials / "adamw-running" / "steps.parquet",
        _steps_rows("adamw-running", rng)[:4],
        writer_schema.STEPS,
        extra=opt_extra,
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A parent folder with two sweeps: vision (2 seeds) and LM (1 seed)."""
    root = tmp_path / "results"
    _write_sweep(root, "vision", VISION, seeds=2, seed=0)
    _write_sweep(root, "lm", LM, seeds=1, seed=1)
    return root


def test_schema_constants_match_writer():
    assert SCHEMA_VERSION == writer_schema.SCHEMA_VERSION
    assert METADATA_KEY == writer_schema.METADATA_KEY
    assert REQUIRED_COLUMNS == writer_schema.REQUIRED
    assert set(TABLES) == set(writer_schema.TABLES)
    for table, required in REQUIRED_COLUMNS.items():
        assert set(required) <= set(writer_schema.TABLES[table].names), table


def test_analysis_imports_no_training_code():
    code = (
        "import sys, analysis, analysis.report;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'bench', 'optimizers', 'launchers'});"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_load_table_concatenates_trials(results: Path):
    runs = load_table(results / "vision", "runs")
    assert len(runs) == 5  # 2 optimizers × 2 seeds + the failed trial; the running one has none
    assert set(runs["status"]) == {"completed", "failed"}
    assert "config.lr" in runs.columns  # extra columns survive, missing ones become null
    assert runs.loc[runs["trial_id"] == "spectral_newton-failed", "config.lr"].isna().all()

    steps = load_table(results / "vision", "steps")
    assert len(steps) == 4 * N_STEPS + 4  # the failed trial has no steps; running has 4
    assert steps["trial_id"].nunique() == 5
    adamw = steps[steps["trial_id"].str.startswith("adamw-s")]
    assert adamw["opt_spectral_time_s"].isna().all()
    assert steps.loc[steps["trial_id"] == "spectral_newton-s0", "opt_spectral_time_s"].notna().all()
    assert steps["trial_path"].map(lambda p: Path(p).parent.name == "trials").all()

    few = load_table(results / "vision", "steps", columns=["step", "train_loss", "not_a_column"])
    assert {"step", "train_loss", "trial_id", "trial_path"} <= set(few.columns)
    assert "eval_metric" not in few.columns and len(few) == len(steps)


def test_parent_directory_reads_all_sweeps(results: Path):
    runs = load_table(results, "runs")
    assert len(runs) == 5 + 3
    assert set(runs["sweep_name"]) == {"vision", "lm"}
    # The same trial id exists in both sweeps; trial_path keeps them apart.
    assert runs["trial_path"].is_unique and not runs["trial_id"].is_unique
    assert len(load_table(results / "lm" / "trials", "runs")) == 3


def test_missing_table_is_empty_not_an_error(results: Path):
    assert load_table(results, "curvature").empty


def test_results_not_found(tmp_path: Path):
    with pytest.raises(ResultsNotFound, match="does not exist"):
        load_table(tmp_path / "nope", "runs")
    (tmp_path / "empty" / "trials").mkdir(parents=True)
    with pytest.raises(ResultsNotFound, match="no results found"):
        load_table(tmp_path / "empty", "runs")
    with pytest.raises(ResultsNotFound):
        build_report(tmp_path / "nope")


def test_newer_schema_version_is_refused(results: Path):
    path = results / "vision" / "trials" / "adamw-s0" / "runs.parquet"
    row = pq.read_table(path).to_pylist()
    newer = SCHEMA_VERSION + 1
    _write(path, row, writer_schema.RUNS, version=newer, extra={"config.lr": pa.float64()})
    with pytest.raises(SchemaVersionError, match=f"schema version {newer}; this specbench reads version "
                       f"{SCHEMA_VERSION} — upgrade specbench"):
        load_table(results, "runs")


def test_older_schema_version_is_refused_with_what_to_do(results: Path):
    path = results / "vision" / "trials" / "adamw-s0" / "runs.parquet"
    _write(path, pq.read_table(path).to_pylist(), writer_schema.RUNS, version=1,
           extra={"config.lr": pa.float64()})
    with pytest.raises(SchemaVersionError) as info:
        load_table(results, "runs")
    message = str(info.value)
    assert str(path) in message and "schema version 1" in message
    assert f"python -m bench.results.upgrade {path}" in message


def test_a_missing_or_null_required_column_is_refused(tmp_path: Path):
    """No guessing downstream: an (unlabelled, hand-made) runs file without optimizer_entry,
    or with a null metric_goal, is refused when read, naming the file and the column."""
    rng = np.random.default_rng(0)
    row = _runs_row("s", "t0", "adamw", 0, "completed", VISION, rng)
    path = tmp_path / "s" / "trials" / "t0" / "runs.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in row.items() if k != "optimizer_entry"}]), path)
    with pytest.raises(ResultsReadError, match=r"runs\.parquet lacks the column\(s\) optimizer_entry"):
        load_table(tmp_path / "s", "runs")
    _write(path, [{**row, "metric_goal": None}], writer_schema.RUNS)
    with pytest.raises(ResultsReadError, match="missing values in metric_goal"):
        build_report(tmp_path / "s")


def test_newer_version_in_column_only_is_refused(tmp_path: Path):
    path = tmp_path / "s" / "trials" / "t0" / "steps.parquet"
    _write(
        path,
        _steps_rows("t0", np.random.default_rng(0)),
        writer_schema.STEPS,
        version=SCHEMA_VERSION + 1,
        extra={"opt_spectral_time_s": pa.float64()},
    )
    table = pq.read_table(path).replace_schema_metadata(None)  # as if another tool rewrote it
    pq.write_table(table, path)
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        load_table(tmp_path / "s", "steps")


def test_trial_states_reports_torn_and_failed(results: Path):
    states = trial_states(results / "vision").set_index("trial_id")
    assert len(states) == 6
    assert states.loc["adamw-running", "state"] == INCOMPLETE
    assert states.loc["adamw-running", "n_steps_logged"] == 4
    assert states.loc["adamw-running", "last_step"] == 4
    assert not states.loc["adamw-running", "has_runs"]
    assert states.loc["spectral_newton-failed", "state"] == "failed"
    assert states.loc["spectral_newton-failed", "error"] == FAILED_ERROR
    assert not states.loc["spectral_newton-failed", "has_steps"]
    assert (states["state"] == "completed").sum() == 4


def test_optimizer_table_matches_numpy(results: Path):
    runs = load_table(results, "runs")
    table = optimizer_table(runs)
    assert len(table) == 4  # 2 workloads × 2 optimizers
    for row in table.itertuples(index=False):
        mine = runs[
            (runs["model"] == row.model)
            & (runs["dataset"] == row.dataset)
            & (runs["optimizer_label"] == row.optimizer_label)
        ]
        done = mine[mine["status"] == "completed"]
        assert row.n_trials == len(mine)
        assert row.n_completed == len(done)
        assert row.n_failed == (mine["status"] == "failed").sum()
        assert row.n_diverged == 0
        for m in ("final_eval_metric", "best_eval_metric", "test_metric"):
            x = done[m].to_numpy(dtype=float)
            assert getattr(row, f"{m}_mean") == pytest.approx(np.mean(x))
            if len(x) > 1:
                assert getattr(row, f"{m}_std") == pytest.approx(np.std(x, ddof=1))
            else:
                assert math.isnan(getattr(row, f"{m}_std"))
        for m in ("final_train_loss", "wall_time_s", "median_step_time_s"):
            assert getattr(row, f"{m}_mean") == pytest.approx(done[m].to_numpy(dtype=float).mean())

    vision = table[table["dataset"] == VISION["dataset"]]
    assert vision["n_failed"].tolist() in ([0, 1], [1, 0])
    assert (vision["metric_name"] == "accuracy").all()


def test_table_sorts_best_first_by_goal(results: Path):
    table = optimizer_table(load_table(results, "runs"))
    for (_, _), wl in table.groupby(["model", "dataset"]):
        values = wl["final_eval_metric_mean"].tolist()
        goal = wl["metric_goal"].iloc[0]
        assert values == sorted(values, reverse=(goal == "max"))
        assert wl["rank"].tolist() == [1, 2]


def test_table_with_no_completed_trials():
    runs = pd.DataFrame(
        [{"sweep_name": "s", "model": "m", "dataset": "d", "optimizer_label": "a", "status": "failed",
          "seed_index": 0, "metric_name": "accuracy", "metric_goal": "max"}]
    )
    table = optimizer_table(runs)
    assert table.loc[0, "n_failed"] == 1 and math.isnan(table.loc[0, "final_eval_metric_mean"])
    assert "—" in format_table(table)
    assert optimizer_table(pd.DataFrame()).empty


def test_format_table_shows_mean_pm_std(results: Path):
    assert format_mean_std(0.95234, 0.00412) == "0.952 ± 0.004"
    assert format_mean_std(35.214, 0.48) == "35.2 ± 0.5"
    assert format_mean_std(0.9, float("nan")) == "0.900"
    table = optimizer_table(load_table(results, "runs"))
    for style in ("markdown", "plain"):
        text = format_table(table, style=style)
        assert "±" in text and "spectral_newton" in text and "accuracy ↑" in text
        assert len(text.splitlines()) == 2 + len(table)


def test_t_interval():
    assert math.isnan(t_interval([]).mean)
    one = t_interval([0.5, float("nan")])
    assert one.mean == 0.5 and one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    x = np.array([0.90, 0.92, 0.95])
    ci = t_interval(x)
    half = 4.302652729911275 * x.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert ci.low == pytest.approx(x.mean() - half) and ci.high == pytest.approx(x.mean() + half)


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_report_on_sweep(results: Path):
    report = build_report(results / "vision")
    assert report.out_dir == (results / "vision" / "report").resolve()
    md = report.report_path.read_text(encoding="utf-8")
    assert report.report_path.name == "report.md"
    # The failed trial, its full error (pipe escaped nowhere: it sits in a code block), the
    # running trial: none of them hidden.
    assert "spectral_newton-failed" in md and FAILED_ERROR in md
    assert "adamw-running" in md and INCOMPLETE in md
    assert report.state_counts == {"completed": 4, "failed": 1, INCOMPLETE: 1}
    assert "0.9" in report.text and "6 trials" in report.text
    assert "code: all 5 trials ran at commit `0123456789` (clean tree)" in md

    assert len(report.plot_paths) == 3  # one workload × (loss/step, loss/wall, eval/step)
    for path in report.plot_paths:
        assert path.parent == report.out_dir / "plots" and _is_png(path)
        assert f"(plots/{path.name})" in md
    assert len(report.table) == 2


def test_build_report_on_parent_dir(results: Path, tmp_path: Path):
    out = tmp_path / "out"
    report = build_report(results, out_dir=out)
    assert report.report_path == out / "report.md" and report.report_path.is_file()
    assert len(report.plot_paths) == 6 and all(_is_png(p) for p in report.plot_paths)
    assert set(report.table["dataset"]) == {VISION["dataset"], LM["dataset"]}
    assert report.state_counts["failed"] == 2 and report.state_counts[INCOMPLETE] == 2
    assert "perplexity ↓" in report.report_path.read_text(encoding="utf-8")


def test_public_api():
    for name in ("load_table", "build_report", "optimizer_table", "SchemaVersionError", "ResultsNotFound"):
        assert hasattr(analysis, name)


def test_report_with_diverged_and_only_running_trials(tmp_path: Path):
    rng = np.random.default_rng(3)
    trials = tmp_path / "sweep" / "trials"
    diverged = _runs_row("sweep", "sn-0", "spectral_newton", 0, "diverged", VISION, rng)
    diverged["error"] = "loss is NaN at step 7"
    _write(trials / "sn-0" / "runs.parquet", [diverged], writer_schema.RUNS)
    _write(trials / "sn-0" / "steps.parquet", _steps_rows("sn-0", rng)[:7], writer_schema.STEPS)
    (trials / "just-started").mkdir()  # no file yet: still reported
    report = build_report(tmp_path / "sweep")
    md = report.report_path.read_text(encoding="utf-8")
    assert report.state_counts == {"diverged": 1, INCOMPLETE: 1}
    assert "loss is NaN at step 7" in md and "just-started" in md
    assert report.table.loc[0, "n_diverged"] == 1
    assert report.plot_paths == []  # diverged curves are not averaged into plots

    # Nothing finished anywhere: no runs table at all, still a report.
    running = tmp_path / "running" / "trials" / "t0" / "steps.parquet"
    _write(running, _steps_rows("t0", rng)[:3], writer_schema.STEPS)
    report = build_report(tmp_path / "running")
    assert report.table.empty and report.state_counts == {INCOMPLETE: 1}
    assert "(no finished trials)" in report.report_path.read_text(encoding="utf-8")


def test_no_absolute_path_of_the_machine_in_the_report(results: Path, tmp_path: Path):
    path = results / "vision" / "trials" / "spectral_newton-failed" / "runs.parquet"
    row = pq.read_table(path).to_pylist()[0]
    row["error"] = f"OSError: cannot open {results}/vision/trials/spectral_newton-failed/ckpt/global_step0"
    _write(path, [row], writer_schema.RUNS)
    report = build_report(results, tmp_path / "out")
    md = report.report_path.read_text(encoding="utf-8")
    assert str(tmp_path) not in md and str(tmp_path.resolve()) not in md
    assert "- results: `../results` (relative to this report)" in md
    assert "- directory (relative to the results): vision/trials/spectral_newton-failed" in md
    assert "cannot open <results>/vision/trials/spectral_newton-failed/ckpt" in md
    assert "| lm/trials/adamw-running " in md  # the incomplete trial, with its relative path


def test_the_report_says_when_trials_ran_on_unlike_machines():
    def runs(*peaks):
        return pd.DataFrame({"peak_flops_per_s": list(peaks)})

    like = machine_line(runs(100e9, 110e9, None))
    assert like.startswith("machine: measured peak 100–110 GFLOP/s over 2 trials")
    unlike = machine_line(runs(106e9, 29e9, 100e9))
    assert unlike.startswith("**machine speed NOT uniform**") and "29–106 GFLOP/s over 3 trials (3.7×" in unlike
    # The limit itself still counts as one machine; nothing recorded, nothing said.
    assert machine_line(runs(100e9, 100e9 * SPEED_SPREAD_LIMIT)).startswith("machine:")
    assert machine_line(runs(None)) == machine_line(pd.DataFrame({"x": [1]})) == ""


def test_the_recorded_machine_type_decides_before_the_peaks():
    zen1, zen4 = "AMD EPYC (AuthenticAMD cpu family 23 model 1; avx2)", "AMD EPYC (AuthenticAMD cpu family 25 model 17; avx512f)"

    def runs(*trials):  # (machine type or None, peak)
        return pd.DataFrame({
            "hardware_json": [json.dumps({"machine_type": t} if t else {"cpu_model": "AMD EPYC"}) for t, _ in trials],
            "peak_flops_per_s": [p for _, p in trials]})  # fmt: skip

    # Two kinds of machine: not uniform, even with peaks within the limit.
    mixed = machine_line(runs((zen1, 100e9), (zen4, 110e9), (zen4, 105e9), (None, 100e9)))
    assert mixed.startswith("**machine NOT uniform**: the trials ran on 2 kinds of machine")
    assert f"{zen4} × 2; {zen1} × 1; 1 unrecorded" in mixed
    # One kind for every trial: a wide peak range is load, not a warning.
    one = machine_line(runs((zen1, 16e9), (zen1, 32e9)))
    assert one.startswith(f"machine: every trial on {zen1}; measured peak 16–32 GFLOP/s") and "2.0×: load" in one
    assert "NOT" not in one
    # Partly recorded, one kind: the peaks still decide, and the line says what is known.
    part = machine_line(runs((zen1, 34e9), (None, 106e9)))
    assert part.startswith("**machine speed NOT uniform**") and f"(1 of 2 trials name their machine, all {zen1})" in part
    assert machine_line(runs(("unknown", 100e9))).startswith("machine: measured peak 100–100")


def test_provenance_names_every_way_trials_can_disagree_on_code():
    def runs(*commits):
        return pd.DataFrame({"git_commit": list(commits)})

    assert provenance(runs(COMMIT, COMMIT)).clean_single_commit
    mixed = provenance_line(runs(COMMIT, COMMIT, "f" * 40 + "+dirty", None))
    assert mixed.startswith("**code: NOT one clean commit**")
    assert "3 different code versions" in mixed and "1 with uncommitted changes" in mixed
    assert "1 from code of unknown commit" in mixed and "`0123456789` × 2" in mixed
    assert "`ffffffffff+dirty` × 1" in mixed
    # One commit, but dirty: still not a clean comparison.
    assert not provenance(runs(COMMIT + "+dirty")).clean_single_commit
    # Files written without the column (or an installed wheel) count as unknown.
    assert provenance(pd.DataFrame({"x": [1]})).unknown == 1
    assert provenance_line(pd.DataFrame()) == "code: no trials recorded"
