"""The language-model question (``lm_question.md`` and ``.html``): what α is in a language
model's layers, and does Spectral Newton help it?

docs/science/fits.md#published-numbers reports α for one synthetic mini GPT-2 (QKV 1.43, attention out 1.17, MLP-up 0.84,
MLP-down 1.15, its Table 2) and mentions another run with MLP α ≈ 2; its Spectral Newton
evidence (§5) is vision-only and single-seed. This report reads a results directory holding
an α-map sweep (``configs/lm/alpha_map*.yaml``) and an optimizer sweep
(``configs/lm/optimizer_question*.yaml``) and renders:

1. the α map: per model and layer type, medians of α, γ, s, PR_h, β, φ over layers (each
   trial's last probe), beside the paper's two LM runs, with a verdict per type; α by depth
   and over training;
2. the optimizer comparison, per sweep that ran two or more optimizer entries: each entry's
   best learning rate chosen on validation loss, its seeds' test loss (mean and 95 % t-interval),
   throughput and MFU, time to target, loss vs tokens and vs wall-clock;
3. a conclusion drawn by fixed rules from those tables (nothing is written by hand), stating the
   scale it was measured at.

Like the rest of ``analysis`` it reads only Parquet.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.comparison import SETTING, best_settings, prepare_runs, summarize_time_to_target, time_to_target
from analysis.curvature import attach_run_info, load_layer_fits, select_step
from analysis.dataset import TRIAL_PATH, load_table, locate
from analysis.paired import ALPHA as SEPARATION_ALPHA
from analysis.paired import holm, paired_by_seed, range_interval
from analysis.plots import entry_colors
from analysis.provenance import machine_line, provenance_line
from analysis.tables import CLIPPED_NOTE, format_interval, format_number, frame_grid
from analysis.tuning import final_rows

#: docs/science/fits.md#published-numbers, Table 2 (mini GPT-2): median α per layer type.
PAPER_TABLE2 = {"attn_qkv": 1.43, "attn_out": 1.17, "mlp_up": 0.84, "mlp_down": 1.15}
#: docs/science/fits.md#published-numbers: the paper's other GPT-2 run, where MLP layers gave α ≈ 2 (its own summary file
#: reads 2.08 up / 2.04 down).
PAPER_OTHER_RUN = {"mlp_up": 2.0, "mlp_down": 2.0}
#: The paper's "QKV" row covers the query, key and value projections, fused or separate.
PAPER_TYPE = {"attn_q": "attn_qkv", "attn_k": "attn_qkv", "attn_v": "attn_qkv", "attn_qkv": "attn_qkv",
              "attn_out": "attn_out", "mlp_up": "mlp_up", "mlp_gate": "mlp_up", "mlp_down": "mlp_down"}
#: |median α − published| within this counts as agreement: ≈ 2.5 standard errors of a 6-layer
#: median (the same tolerance as the LM claims of configs/paper/claims.yaml).
ALPHA_TOLERANCE = 0.25
#: Exponents summarised in the α map (layer_fits columns).
MAP_COLUMNS = ("alpha", "gamma", "s", "pr_h", "beta", "phi")
#: Steps columns this report reads.
STEPS_COLUMNS = ["trial_id", "step", "tokens_seen", "samples_seen", "wall_time_s", "probe_time_s", "train_loss",
                 "eval_loss", "eval_metric", "step_time_s", "optimizer_time_s", "tokens_per_s", "mfu"]  # fmt: skip
#: Registry names the conclusions compare (``runs.optimizer``, never parsed from entry labels).
SPECTRAL_NEWTON, ADAMW = "spectral_newton", "adamw"
#: Why an MFU above 1 is not a result.
MFU_NOTE = (
    "An MFU above 1 cannot happen (a device cannot exceed its own peak): such a value means the "
    "peak it is divided by was measured too low — on CPU a float32 matmul timed while the machine "
    "was shared — so it is a measurement error, shown as `invalid`, not a result."
)


@dataclass
class LMQuestionReport:
    """What :func:`build_lm_question` wrote and the tables behind it."""

    out_dir: Path
    markdown_path: Path
    html_path: Path
    alpha_map: pd.DataFrame
    optimizers: pd.DataFrame
    conclusions: list[str]
    plot_paths: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------ α map
def alpha_map(fits: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (model, trained with, layer type): layers probed and the median of each exponent of
    :data:`MAP_COLUMNS` at each trial's last probe, beside the paper's values and a verdict.

    ``verdict`` compares the median α with Table 2 and with the other run (MLP only):
    ``Table 2`` / ``other run (≈2)`` when within :data:`ALPHA_TOLERANCE` of one of them,
    ``neither`` otherwise; empty for types the paper did not report. ``probe_mode``: the probe
    mode the row's numbers come from (docs/science/quantities.md#probe-modes); modes are never
    pooled, and α exists only in mode ``full``, so a cheap mode's layers have no row here.
    """
    cols = ["model", "trained_with", "layer_type", "probe_mode", "n", *[f"{c}_median" for c in MAP_COLUMNS],
            "alpha_q25", "alpha_q75", "paper_table2", "paper_other_run", "verdict"]  # fmt: skip
    if fits.empty:
        return pd.DataFrame(columns=cols)
    data = select_step(attach_run_info(fits, runs), "latest")
    data = data.assign(trained_with=_entry_of(data, runs))
    data = data[data["task"] == "lm"]
    mode = data["probe_mode"].fillna("unknown") if "probe_mode" in data.columns else "unknown"
    data = data.assign(_mode=mode)
    rows = []
    for (model, entry, ltype, probe_mode), group in data.groupby(["model", "trained_with", "layer_type", "_mode"],
                                                                  sort=True):
        alpha = pd.to_numeric(group["alpha"], errors="coerce").dropna()
        if alpha.empty:
            continue
        row = {"model": model, "trained_with": entry, "layer_type": ltype, "probe_mode": probe_mode, "n": len(alpha)}
        for c in MAP_COLUMNS:
            values = pd.to_numeric(group[c], errors="coerce").dropna() if c in group.columns else pd.Series([])
            row[f"{c}_median"] = float(values.median()) if len(values) else math.nan
        row["alpha_q25"], row["alpha_q75"] = float(alpha.quantile(0.25)), float(alpha.quantile(0.75))
        paper = PAPER_TYPE.get(ltype)
        row["paper_table2"] = PAPER_TABLE2.get(paper, math.nan) if paper else math.nan
        row["paper_other_run"] = PAPER_OTHER_RUN.get(paper, math.nan) if paper else math.nan
        row["verdict"] = _verdict(row["alpha_median"], row["paper_table2"], row["paper_other_run"])
        rows.append(row)
    table = pd.DataFrame(rows, columns=cols)
    order = {t: i for i, t in enumerate(PAPER_TYPE)}
    table = table.assign(_o=table["layer_type"].map(lambda t: order.get(t, len(order))))
    return table.sort_values(["model", "trained_with", "_o", "probe_mode"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _verdict(alpha: float, table2: float, other: float) -> str:
    if not np.isfinite(table2):
        return ""
    hits = []
    if abs(alpha - table2) <= ALPHA_TOLERANCE:
        hits.append("Table 2")
    if np.isfinite(other) and abs(alpha - other) <= ALPHA_TOLERANCE:
        hits.append("other run (≈2)")
    return " and ".join(hits) or "neither"


def _entry_of(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.Series:
    """The optimizer entry each fits row's trial was trained with ("unknown" for a trial
    without a runs row: one still running)."""
    lookup = dict(zip(runs[TRIAL_PATH], runs["optimizer_entry"], strict=True)) if not runs.empty else {}
    return frame[TRIAL_PATH].map(lookup).fillna("unknown")


def alpha_by_depth(fits: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """α at each trial's last probe by (model, trained with, depth) × layer type (median over the
    trials of a group; depth is the block index of the layer in forward order)."""
    if fits.empty or "depth" not in fits.columns:
        return pd.DataFrame()
    data = select_step(attach_run_info(fits, runs), "latest")
    data = data.assign(trained_with=_entry_of(data, runs), _a=pd.to_numeric(data["alpha"], errors="coerce"),
                       block=_block_index(data["layer"]))
    data = data[np.isfinite(data["_a"]) & data["layer_type"].isin(list(PAPER_TYPE))]
    if data.empty:
        return pd.DataFrame()
    table = data.pivot_table(index=["model", "trained_with", "block"], columns="layer_type", values="_a",
                             aggfunc="median")
    order = [t for t in PAPER_TYPE if t in table.columns]
    return table[order].reset_index()


def _block_index(layers: pd.Series) -> pd.Series:
    """The transformer block a layer belongs to: the first integer path component
    (``model.transformer.h.3.attn.c_attn.q`` → 3), -1 when there is none (e.g. the head)."""
    found = layers.astype(str).str.extract(r"\.(\d+)\.", expand=False)
    return pd.to_numeric(found, errors="coerce").fillna(-1).astype(int)


def alpha_over_steps(fits: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Median α per (model, trained with, layer type) at every probed step: is α a property of
    the layer or of the moment it was probed?"""
    if fits.empty:
        return pd.DataFrame()
    data = attach_run_info(fits, runs)
    data = data.assign(trained_with=_entry_of(data, runs), _a=pd.to_numeric(data["alpha"], errors="coerce"))
    data = data[np.isfinite(data["_a"])]
    if data.empty:
        return pd.DataFrame()
    table = data.pivot_table(index=["model", "trained_with", "layer_type"], columns="step", values="_a",
                             aggfunc="median")
    table.columns = [f"step {int(c)}" for c in table.columns]
    return table.reset_index()


# ---------------------------------------------------------------------- optimizer comparison
def optimizer_sweeps(runs: pd.DataFrame) -> list[str]:
    """Sweeps that compared two or more optimizer entries on a language-modelling workload."""
    if runs.empty:
        return []
    frame = runs[runs["task"] == "lm"]
    counts = frame.groupby("sweep_name")["optimizer_entry"].nunique()
    return sorted(counts[counts >= 2].index)


def optimizer_table(runs: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (sweep, model, optimizer entry): the registry optimizer, the best setting
    (chosen on validation among the finalists of a two-stage sweep), its seeds' test loss (mean,
    95 % t-interval on the log scale, so above 0; ``seed_loss``: seed index → test loss, for the
    paired tests of the conclusions) and test
    metric, tokens, wall-clock, median tokens/s and MFU, the optimizer's share of the step time,
    and time to the target."""
    rows = []
    for sweep in optimizer_sweeps(runs):
        every = prepare_runs(runs[runs["sweep_name"] == sweep])
        # The budget counts both stages; the comparison uses the finalists (analysis.tuning).
        budget = every.drop_duplicates(["_opt", "model", *SETTING]).groupby(["_opt", "model"]).size()
        sruns = final_rows(runs[runs["sweep_name"] == sweep])
        best = best_settings(sruns)
        ttt = summarize_time_to_target(time_to_target(steps, sruns))
        frame = prepare_runs(sruns)
        for b in best.itertuples():
            seeds = frame[(frame["_opt"] == b.optimizer) & (frame["optimizer_label"] == b.best_setting)
                          & (frame["tuning_index"] == b.tuning_index) & (frame["model"] == b.model)]
            done = seeds[seeds["status"] == "completed"]
            seed_loss = pd.to_numeric(done["test_loss"], errors="coerce")
            loss = range_interval(seed_loss, "loss")
            mine = steps[steps[TRIAL_PATH].isin(done[TRIAL_PATH])] if not steps.empty else steps
            t = ttt[(ttt["optimizer"] == b.optimizer) & (ttt["model"] == b.model)]
            rows.append({
                "sweep": sweep, "model": b.model, "optimizer": b.optimizer, "registry": seeds["optimizer"].iloc[0],
                "rank": b.rank, "best_setting": b.best_setting, "n_settings": int(budget.get((b.optimizer, b.model), b.n_settings)),
                "n_seeds": b.n_seeds, "n_completed": b.n_completed, "n_diverged": b.n_diverged,
                "test_loss": loss.mean, "test_loss_low": loss.low, "test_loss_high": loss.high,
                "test_loss_clipped": loss.clipped, "seed_loss": seed_loss.groupby(done["_seed"]).mean().to_dict(),
                "metric_name": b.metric_name, "test_metric": b.test_metric_mean,
                "tokens": _mean(done, "tokens_seen"), "wall_time_s": _mean(done, "wall_time_s"),
                "tokens_per_s": _mean(done, "median_tokens_per_s"), "mfu": _mean(done, "median_mfu"),
                "optimizer_share": _optimizer_share(mine),
                "target": float(t["target"].iloc[0]) if len(t) else math.nan,
                "reached": f"{int(t['n_reached'].iloc[0])}/{int(t['n_seeds'].iloc[0])}" if len(t) else "",
                "tokens_to_target": float(t["tokens_mean"].iloc[0]) if len(t) else math.nan,
                "seconds_to_target": float(t["seconds_mean"].iloc[0]) if len(t) else math.nan,
            })  # fmt: skip
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["sweep", "model", "test_loss"], kind="stable").reset_index(drop=True)


def _mean(frame: pd.DataFrame, column: str) -> float:
    if column not in frame.columns or frame.empty:
        return math.nan
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def _optimizer_share(steps: pd.DataFrame) -> float:
    """Median over logged intervals of optimizer time / step time."""
    if steps.empty or not {"optimizer_time_s", "step_time_s"} <= set(steps.columns):
        return math.nan
    ratio = pd.to_numeric(steps["optimizer_time_s"], errors="coerce") / pd.to_numeric(steps["step_time_s"], errors="coerce")
    ratio = ratio[np.isfinite(ratio)]
    return float(ratio.median()) if len(ratio) else math.nan


# ------------------------------------------------------------------------------ conclusions
def optimizer_conclusions(table: pd.DataFrame) -> list[str]:
    """Sentences that follow from the optimizer table by fixed rules.

    Per (sweep, model), the comparisons the answer states — the best Spectral Newton variant
    against AdamW and against the best entry, each other α policy against the best one — are
    paired per-seed tests of the test loss (seed index i: the same initial weights and data
    order for every entry; ``analysis.paired.paired_test``), Holm-adjusted over those
    comparisons. Two entries "differ" only when the adjusted p-value is below
    ``analysis.paired.ALPHA``; otherwise the sentence says the data cannot order them.
    """
    out: list[str] = []
    for (sweep, model), group in table.groupby(["sweep", "model"], sort=True):
        group = group.sort_values("test_loss")
        best = group.iloc[0]
        out.append(f"On {model} (sweep `{sweep}`), the lowest mean test loss is {best.optimizer}'s "
                   f"{format_number(best.test_loss)} (95 % interval {_ci(best)}, {int(best.n_completed)} seeds).")
        sn = group[group["registry"] == SPECTRAL_NEWTON]
        adamw = group[group["registry"] == ADAMW]
        if sn.empty:
            continue
        top_sn = sn.iloc[0]
        refs = [("AdamW", adamw)]
        if best.registry != ADAMW:
            refs.append(("the best optimizer", group.iloc[[0]]))
        pairs = [(name, ref.iloc[0]) for name, ref in refs if not ref.empty and ref.iloc[0].optimizer != top_sn.optimizer]
        others = [r for _, r in sn.iloc[1:].iterrows()]
        tests = [_paired(top_sn, r) for _, r in pairs] + [_paired(r, top_sn) for r in others]
        adjusted = holm([t["p_value"] for t in tests])
        for (ref_name, r), test, p_adj in zip(pairs, tests[:len(pairs)], adjusted[:len(pairs)], strict=True):
            out.append(f"Best Spectral Newton variant ({top_sn.optimizer}, {format_number(top_sn.test_loss)} "
                       f"[{_ci(top_sn)}]) vs {ref_name} ({r.optimizer}, {format_number(r.test_loss)} "
                       f"[{_ci(r)}]): {_subject('Spectral Newton', _verdict_of(test, p_adj))}.")
        if others:
            ordered = ", ".join(f"{k} {format_number(v)}" for k, v in sn.set_index("optimizer")["test_loss"].items())
            each = "; ".join(f"{r.optimizer}: {_verdict_of(t, p)}"
                             for r, t, p in zip(others, tests[len(pairs):], adjusted[len(pairs):], strict=True))
            out.append(f"Among the α policies: {ordered}. Against the best policy ({top_sn.optimizer}), paired: {each}.")
        lost = group[group["n_diverged"] > 0]
        for r in lost.itertuples():
            out.append(f"{r.optimizer}'s chosen setting lost {int(r.n_diverged)} seed(s) to divergence.")
    return out


def _ci(row) -> str:
    if not (np.isfinite(row.test_loss_low) and np.isfinite(row.test_loss_high)):
        return "no interval: one seed"
    return f"{format_number(row.test_loss_low)}–{format_number(row.test_loss_high)}"


def _paired(a, b) -> dict[str, float]:
    """Paired test of ``a``'s per-seed test loss minus ``b``'s, over the seeds both completed."""
    return paired_by_seed(pd.Series(a.seed_loss, dtype=float), pd.Series(b.seed_loss, dtype=float))


def _subject(name: str, verdict: str) -> str:
    """``verdict`` as a sentence about ``name`` ("X is better (…)"; the other verdicts stand alone)."""
    return f"{name} is {verdict}" if verdict.startswith(("better", "worse")) else verdict


def _verdict_of(test: dict[str, float], p_holm: float) -> str:
    """A paired comparison in words: the first of the pair better, worse, or not distinguishable
    at :data:`analysis.paired.ALPHA` after Holm, with the numbers."""
    n = int(test["n"])
    if math.isnan(p_holm):
        why = "fewer than two shared seeds" if n < 2 else "no spread in the differences"
        return f"no paired test possible ({why}); no conclusion"
    numbers = (f"paired over {n} seeds, test-loss difference {format_interval(test['mean_diff'], test['diff_low'], test['diff_high'])}, "
               f"Holm p = {format_number(p_holm)}")
    if p_holm < SEPARATION_ALPHA:
        return f"{'better' if test['mean_diff'] < 0 else 'worse'} ({numbers})"
    return f"not distinguishable at this scale and number of seeds ({numbers})"


def alpha_conclusions(table: pd.DataFrame) -> list[str]:
    """Per model and training optimizer: which published LM run the measured α agrees with."""
    out = []
    reported = table[table["verdict"] != ""]
    for (model, entry), group in reported.groupby(["model", "trained_with"], sort=True):
        parts = [f"{r.layer_type} {format_number(r.alpha_median)} ({r.verdict})" for r in group.itertuples()]
        agree = int((group["verdict"].str.contains("Table 2")).sum())
        out.append(f"{model} trained with {entry}: median α " + "; ".join(parts)
                   + f". {agree} of {len(group)} layer types agree with Table 2 within ±{ALPHA_TOLERANCE}.")
        mlp_up = group[group["layer_type"] == "mlp_up"]
        if len(mlp_up):
            a = float(mlp_up["alpha_median"].iloc[0])
            side = "below 1, as Table 2 reports" if a < 1 else "not below 1, unlike Table 2"
            out.append(f"  MLP-up α is {format_number(a)}: {side}.")
    return out


def scale_statement(runs: pd.DataFrame) -> str:
    """The scale the answer was measured at, from the runs themselves."""
    if runs.empty:
        return "No runs."
    lm = runs[runs["task"] == "lm"]
    params = pd.to_numeric(lm.get("num_parameters"), errors="coerce")
    tokens = pd.to_numeric(lm.get("tokens_seen"), errors="coerce")
    workers = pd.to_numeric(lm.get("world_size"), errors="coerce")
    hardware = {}
    if "hardware_json" in lm.columns and len(lm):
        try:
            hardware = json.loads(lm["hardware_json"].dropna().iloc[0])
        except (ValueError, IndexError):
            hardware = {}
    if hardware.get("gpu"):
        device = f"{hardware.get('gpu_count', 1)}× {hardware['gpu']} per node"
    elif hardware:
        device = f"a {hardware.get('cpu_count', '?')}-core CPU ({hardware.get('cpu_model') or hardware.get('processor')})"
    else:
        device = "an unrecorded device"
    return (f"Measured on {len(lm)} language-model trials of {_range(params, 'parameters')}, "
            f"{_range(tokens, 'training tokens')} each, {_range(workers, 'data-parallel worker(s)')} per trial, "
            f"on {device}.")


def _range(values: pd.Series | None, what: str) -> str:
    if values is None:
        return f"? {what}"
    values = values.dropna()
    if values.empty:
        return f"? {what}"
    lo, hi = float(values.min()), float(values.max())
    text = _si(lo) if lo == hi else f"{_si(lo)}–{_si(hi)}"
    return f"{text} {what}"


def _si(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


# ----------------------------------------------------------------------------------- render
def build_lm_question(results: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> LMQuestionReport:
    """Read ``results`` (a storage root holding the α-map and optimizer sweeps, one sweep, or a
    consolidated directory of them) and write ``lm_question.md``, ``lm_question.html`` and
    ``plots/lm_*.png`` under ``out_dir``. Optimizer colours are :func:`analysis.plots.entry_colors`
    over all the runs, the same map as the sweep report's."""
    from analysis.lm_question_plots import plot_alpha_map, plot_loss_curves_lm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = locate(results)
    runs = load_table(res, "runs")
    steps = load_table(res, "steps", columns=STEPS_COLUMNS)
    fits = load_layer_fits(res)
    colors = entry_colors(runs["optimizer_entry"]) if not runs.empty else {}

    amap = alpha_map(fits, runs)
    over = alpha_over_steps(fits, runs)
    depth = alpha_by_depth(fits, runs)
    opt = optimizer_table(runs, steps)
    plots: list[Path] = []
    if not amap.empty:
        plots += plot_alpha_map(amap, out / "plots", colors)
    for sweep in optimizer_sweeps(runs):
        sruns = runs[runs["sweep_name"] == sweep]
        plots += plot_loss_curves_lm(sruns, steps, opt[opt["sweep"] == sweep], out / "plots", sweep, colors)

    conclusions = optimizer_conclusions(opt) if not opt.empty else []
    alpha_lines = alpha_conclusions(amap) if not amap.empty else []
    md = _markdown(runs, amap, over, depth, opt, conclusions, alpha_lines, plots, out)
    md_path = out / "lm_question.md"
    md_path.write_text(md)
    html_path = out / "lm_question.html"
    html_path.write_text(_html(md))
    return LMQuestionReport(out, md_path, html_path, amap, opt, alpha_lines + conclusions, plots)


def format_mfu(mfu: float) -> str:
    """An MFU as table text: ``invalid (1.24 > 1)`` above 1 (:data:`MFU_NOTE`), never as a result."""
    if np.isfinite(mfu) and mfu > 1:
        return f"invalid ({mfu:.2f} > 1)"
    return format_number(mfu)


def optimizer_display(opt: pd.DataFrame) -> pd.DataFrame:
    """:func:`optimizer_table` as the report prints it: intervals in one cell (clipped ones
    marked), the MFU checked (:func:`format_mfu`), three significant digits; the sweep column
    only with several sweeps."""
    metric = str(opt["metric_name"].iloc[0])

    def numbers(column: str) -> list[str]:
        return [format_number(v) for v in opt[column]]

    shown = pd.DataFrame({
        "sweep": opt["sweep"], "model": opt["model"], "optimizer": opt["optimizer"], "rank": opt["rank"],
        "best setting": opt["best_setting"], "settings": opt["n_settings"],
        "seeds ok/div": [f"{c}/{d}" for c, d in zip(opt["n_completed"], opt["n_diverged"], strict=True)],
        "test loss (95% CI)": [format_interval(*v) for v in
                               opt[["test_loss", "test_loss_low", "test_loss_high", "test_loss_clipped"]].to_numpy()],
        f"test {metric}": numbers("test_metric"), "tokens": numbers("tokens"), "trial wall s": numbers("wall_time_s"),
        "tokens/s": numbers("tokens_per_s"), "MFU": [format_mfu(v) for v in opt["mfu"]],
        "optimizer share": numbers("optimizer_share"), f"target {metric}": [format_number(v, 4) for v in opt["target"]],
        "reached": opt["reached"], "tokens to target": numbers("tokens_to_target"),
        "seconds to target": numbers("seconds_to_target"),
    })  # fmt: skip
    return shown.drop(columns=["sweep"]) if opt["sweep"].nunique() == 1 else shown


def _markdown(runs, amap, over, depth, opt, conclusions, alpha_lines, plots, out: Path) -> str:
    def link(path: Path) -> str:
        return f"![{path.stem}]({Path(os.path.relpath(path, out)).as_posix()})"

    machine = machine_line(runs)
    lines = [
        "# Does Spectral Newton help language models, and what is α in their layers?",
        "",
        f"_{scale_statement(runs)}_",
        "",
        f"_{provenance_line(runs)}._",
        "",
        *([f"_{machine}._", ""] if machine else []),
        "## Answer at this scale",
        "",
    ]
    lines += [f"- {c}" for c in alpha_lines + conclusions] or ["- No language-model results found."]
    lines += [
        "",
        "These sentences are generated from the tables below by fixed rules (`analysis/lm_question.py`): "
        f"an α agrees with a published value within ±{ALPHA_TOLERANCE}; two optimizers differ only when "
        "a paired per-seed test of their test loss (same initial weights and data order per seed index) "
        f"is significant at {100 * SEPARATION_ALPHA:.0f} % after Holm's adjustment over the comparisons stated.",
        "",
        "**What a cluster run of the same configs would add.** `configs/lm/alpha_map.yaml` and "
        "`configs/lm/optimizer_question.yaml` run the same experiments on 10M–350M-parameter GPT-2 and "
        "Llama models over WikiText-103 with a GPT-2 tokenizer, under the same two-stage protocol with a "
        "larger budget (16 Halton settings per entry over each method's defining hyperparameters, the 3 "
        "best on 3 seeds): models in the regime the paper's Table 2 speaks about, "
        "a tuning budget wide enough that a loss is not an artefact of a missed learning rate, and "
        "enough seeds for intervals narrow enough to separate optimizers that differ by a few percent.",
        "",
        "## α map",
        "",
        "Medians over layers of each trial's last probe. `trained_with`: the optimizer entry of the "
        "trial the probe ran in; `probe_mode`: the probe mode behind the row's numbers. Paper columns: docs/science/fits.md#published-numbers (Table 2, mini GPT-2) and its other run "
        "(MLP ≈ 2); the paper's QKV value is compared with q, k and v alike.",
        "",
    ]
    lines += [frame_grid(amap, integers={"n"}) if not amap.empty else "_No curvature probes in these results._", ""]
    if not depth.empty:
        lines += ["### α by depth (transformer block) and layer type, last probe", "", frame_grid(depth), ""]
    if not over.empty:
        lines += ["### α over training (median per layer type at each probed step)", "", frame_grid(over), ""]
    lines += [link(p) for p in plots if p.name.startswith("lm_alpha")]
    lines += ["", "## Optimizer comparison", ""]
    if opt.empty:
        lines += ["_No sweep with two or more optimizer entries on a language model._"]
    else:
        metric = str(opt["metric_name"].iloc[0])
        lines += [
            "Each optimizer entry's tried settings (its equal tuning budget, `settings`: every searched "
            "hyperparameter, not the learning rate alone; under two stages the finalists on their fresh "
            f"seeds) are ranked on mean best validation {metric} over seeds (a diverged seed ranks a "
            "setting last); the chosen "
            "setting's seeds are reported on the **test** split. Test loss: mean token cross-entropy with "
            "its 95 % interval; optimizer share: median optimizer time / step time; MFU: model FLOPs "
            "per second per worker over the worker's peak (a measured float32 matmul rate on CPU); "
            f"target: the median over optimizers of their final validation {metric}; seconds: training "
            "wall-clock, curvature-probe pauses excluded.",
            "",
            frame_grid(optimizer_display(opt)),
            "",
        ]
        if bool(opt["test_loss_clipped"].any()):
            lines += [CLIPPED_NOTE, ""]
        if bool((opt["mfu"] > 1).any()):
            lines += [MFU_NOTE, ""]
        lines += [link(p) for p in plots if p.name.startswith("lm_loss")]
    return "\n".join(lines) + "\n"


def _html(md: str) -> str:
    import markdown

    body = markdown.markdown(md, extensions=["tables"])
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>LM question</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")
