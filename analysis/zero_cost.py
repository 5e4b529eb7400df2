"""What each ZeRO stage costs per rank: memory (parameters, gradients, optimizer state) and
communication (reduce-scatter, all-gather, the matrix owners' traffic), checked against the
``op = zero`` profile rows (``bench.profile.zero``). Reads only Parquet-derived data.

**Memory per rank** of a model of Ψ parameters, M of them in matrices (the matrix optimizers'
group) and O = Ψ − M elsewhere (embeddings, biases, norms: AdamW), on P ranks at stage z, with
b bytes per parameter and gradient element (4: fp32, 2: bf16), after ZeRO (Rajbhandari et al.
2020, §5) and the suite's matrix optimizers (issue 15):

    params = b·Ψ / (P if z = 3 else 1)
    grads  = b·Ψ / (P if z ≥ 2 else 1)
    state  = 4·Ψ·[z ≥ 1 or bf16] / (P if z ≥ 1 else 1)        fp32 master copies (DeepSpeed keeps
                                                               them at z ≥ 1 also in fp32 training)
           + 8·O / (P if z ≥ 1 else 1)                         AdamW's two moments
           + c·M / (P if z ≥ 1 or the owners shard at z = 0 else 1)
                                                               the matrix optimizer's state, on owners
    buckets = 5·10⁸·b at z = 3                                 DeepSpeed's default reduce bucket

c is the client state per matrix element (AdamW 8; Muon and Spectral Newton 4: one momentum),
**fitted** on the measured ZeRO ≥ 1 rows, where every term is divided by P:
c = (P·mean-over-ranks state − 4Ψ − 8·O)/M. The suite's matrix optimizers shard the matrix state
over owners already at ZeRO-0 (``distribution: sharded``); DeepSpeed's Muon and AdamW do not
(:data:`SHARDED_AT_STAGE0`).

**Communication per rank and step** (ring collectives: a rank sends (P − 1)/P of the buffer):
z = 0 all-reduce of the gradients, 2·(P−1)/P·bΨ; z = 1, 2 reduce-scatter of the gradients and
all-gather of the updated parameters, (P−1)/P·bΨ each; z = 3 also the forward and backward
all-gathers of the parameters, 3·(P−1)/P·bΨ in all. The suite's matrix optimizers add their owner
traffic: at z = 0 the owners' broadcast of the new matrices, (P−1)/P·4M; at z ≥ 1 the exchange of
``optimizers.zero_partitions`` (gradient and master pieces to the owners, new values back),
3·4M·(P−1)/P². DeepSpeed's Muon at z = 3 all-gathers momentum and updates, 2·(P−1)/P·4M more.
Each collective costs (P − 1)·ℓ + bytes·β with the broadcast constants ℓ, β of
:mod:`analysis.comm_cost` (gloo: fitted on measured broadcasts, one link's per-byte time; a
GPU device without collective rows: the assumed NCCL ring), i.e. *derived* from the broadcast
fit, not measured on all-gathers or reduce-scatters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from analysis.comm_cost import assumed_fit

#: Whether an optimizer's matrix state is split over owner ranks already at ZeRO-0.
SHARDED_AT_STAGE0: dict[str, bool] = {"adamw": False, "muon_deepspeed": False}
#: Optimizers whose owner exchange (optimizers.zero_partitions) runs at ZeRO ≥ 1.
OWNER_EXCHANGE: frozenset[str] = frozenset({"muon", "spectral_newton", "shampoo", "soap"})
#: DeepSpeed's default ``reduce_bucket_size`` (elements): ZeRO-3 allocates one bucket of it.
REDUCE_BUCKET = 500_000_000
#: Client state bytes per matrix element assumed when no rows measured it (one fp32 momentum;
#: AdamW: two moments).
DEFAULT_MATRIX_STATE: dict[str, float] = {"adamw": 8.0, "muon": 4.0, "muon_deepspeed": 4.0, "spectral_newton": 4.0}
#: Parameters outside the projection matrices (embeddings, LM head, norms) of catalogue models:
#: Llama-2's 32000-token vocabulary, untied head, 2 RMSNorms per layer plus the final one.
NON_MATRIX_PARAMS: dict[str, int] = {
    "llama-7b": 2 * 32000 * 4096 + (2 * 32 + 1) * 4096,
    "llama-70b": 2 * 32000 * 8192 + (2 * 80 + 1) * 8192,
}
#: Device memory, bytes, by device name (datasheets).
DEVICE_MEMORY: dict[str, float] = {"NVIDIA H200": 141e9, "NVIDIA H100 80GB HBM3": 80e9}


def memory_per_rank(params: float, matrix_params: float, ranks: int, stage: int, optimizer: str,
                    matrix_state: float | None = None, precision: str = "fp32") -> dict[str, float]:
    """Bytes per rank of each kind at ZeRO ``stage`` (module docstring); ``total`` is their sum."""
    b = 4 if precision == "fp32" else 2
    p, m = float(params), float(matrix_params)
    other = p - m
    c = DEFAULT_MATRIX_STATE.get(optimizer, 4.0) if matrix_state is None else matrix_state
    split = ranks if stage >= 1 else 1
    owners = ranks if stage >= 1 or SHARDED_AT_STAGE0.get(optimizer, True) else 1
    out = {
        "param_bytes": b * p / (ranks if stage == 3 else 1),
        "grad_bytes": b * p / (ranks if stage >= 2 else 1),
        "state_bytes": (4 * p if stage >= 1 or precision != "fp32" else 0.0) / split + 8 * other / split
        + c * m / owners,
        "bucket_bytes": float(REDUCE_BUCKET * b) if stage == 3 else 0.0,
    }
    out["total"] = sum(out.values())
    return out


def comm_per_rank(params: float, matrix_params: float, ranks: int, stage: int, optimizer: str,
                  precision: str = "fp32") -> dict[str, float]:
    """Bytes each rank sends per step, by collective (module docstring)."""
    b = 4 if precision == "fp32" else 2
    P = ranks
    ring = (P - 1) / P
    out = {"all_reduce": 2 * ring * b * params if stage == 0 else 0.0,
           "reduce_scatter": ring * b * params if stage >= 1 else 0.0,
           "all_gather": (3 if stage == 3 else 1) * ring * b * params if stage >= 1 else 0.0,
           "owner": 0.0}
    if optimizer in OWNER_EXCHANGE:
        out["owner"] = ring * 4 * matrix_params if stage == 0 else 3 * 4 * matrix_params * (P - 1) / P**2
    elif optimizer == "muon_deepspeed" and stage == 3:
        out["owner"] = 2 * ring * 4 * matrix_params
    return out


def collectives_count(stage: int, optimizer: str) -> int:
    """Collectives per step (each pays (P − 1) latencies): one per bucketed pass, roughly."""
    n = {0: 1, 1: 2, 2: 2, 3: 4}[stage]
    return n + (1 if optimizer in OWNER_EXCHANGE or (optimizer == "muon_deepspeed" and stage == 3) else 0)


def comm_seconds(comm: Mapping[str, float], ranks: int, fit: Mapping[str, Any], collectives: int) -> float:
    """Σ bytes·β + collectives·(P − 1)·ℓ: the broadcast constants applied to ring collectives."""
    if ranks <= 1:
        return 0.0
    return sum(comm.values()) * float(fit["seconds_per_byte"]) + collectives * (ranks - 1) * float(fit["latency_s"])


def zero_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The measured cases: op = zero, status ok."""
    if df.empty or "op" not in df.columns:
        return pd.DataFrame()
    z = df[(df["op"] == "zero") & (df["status"] == "ok")]
    return z.copy()


def fit_matrix_state(rows: pd.DataFrame) -> dict[str, float]:
    """c per optimizer label: the median over its ZeRO ≥ 1 rows of (P·mean state − 4Ψ − 8·O)/M."""
    out: dict[str, list[float]] = {}
    for r in rows[rows["zero_stage"] >= 1].to_dict("records"):
        mean_state = float(np.mean(json.loads(r["state_bytes_by_rank"])))
        m, p = float(r["matrix_params"]), float(r["count"])
        out.setdefault(r["label"], []).append((r["ranks"] * mean_state - 4 * p - 8 * (p - m)) / m)
    return {k: float(np.median(v)) for k, v in out.items()}


def full_model_params(row: Mapping[str, Any]) -> tuple[float, float]:
    """(Ψ, M) of the whole model a row's cut model stands for: ``full_blocks`` GPT-2 blocks of
    width d, each 12d² matrix elements and 13d others (biases, two LayerNorms)."""
    d, extra = int(row["dim"]), int(row["full_blocks"]) - int(row["blocks"])
    return float(row["count"]) + extra * (12 * d * d + 13 * d), float(row["matrix_params"]) + extra * 12 * d * d


def check_rows(rows: pd.DataFrame, fit: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Every measured case against the model: memory by kind (bytes, measured and predicted, with
    c fitted on the same rows) and the step's extra seconds over ZeRO-0 (measured) against the
    communication's extra seconds (predicted); plus the whole model's predicted memory per rank
    (``full_*``, extrapolated per block from the cut model)."""
    if rows.empty:
        return pd.DataFrame()
    c = fit_matrix_state(rows)
    base = {(r["model"], r["label"], r["ranks"]): r["seconds"] for r in rows[rows["zero_stage"] == 0].to_dict("records")}
    out = []
    for r in rows.to_dict("records"):
        P, z, name = int(r["ranks"]), int(r["zero_stage"]), r["optimizer"]
        f = fit or assumed_fit(P)
        pred = memory_per_rank(r["count"], r["matrix_params"], P, z, name, c.get(r["label"]))
        comm = comm_seconds(comm_per_rank(r["count"], r["matrix_params"], P, z, name), P, f, collectives_count(z, name))
        comm0 = comm_seconds(comm_per_rank(r["count"], r["matrix_params"], P, 0, name), P, f, collectives_count(0, name))
        full_p, full_m = full_model_params(r)
        full = memory_per_rank(full_p, full_m, P, z, name, c.get(r["label"]))
        row = {"model": r["model"], "blocks": int(r["blocks"]), "full_blocks": int(r["full_blocks"]), "label": r["label"],
               "ranks": P, "zero_stage": z, "params": int(r["count"]),
               "step_s": r["seconds"], "ratio_to_stage0": r.get("ratio_to_stage0", math.nan),
               "extra_s_measured": r["seconds"] - base.get((r["model"], r["label"], P), math.nan),
               "extra_comm_s_predicted": comm - comm0, "full_params": full_p, "full_total_bytes": full["total"]}
        for k in ("param_bytes", "grad_bytes", "state_bytes", "bucket_bytes"):
            row[k] = float(r[k])
            row[k.replace("bytes", "pred")] = pred[k]
        row["matrix_state_c"] = c.get(r["label"], math.nan)
        out.append(row)
    return pd.DataFrame(out)


def device_memory(costs: Mapping[str, Any], override_gb: float | None = None) -> float | None:
    """The device's memory in bytes: ``override_gb`` (GB), else by device name, else None."""
    if override_gb is not None:
        return override_gb * 1e9
    return DEVICE_MEMORY.get(str(costs.get("device_name", "")))


def predict_zero(model: str, costs: Mapping[str, Any], ranks: int, stage: int, optimizer: str,
                 precision: str = "bf16", matrix_state: float | None = None,
                 memory_gb: float | None = None) -> dict[str, Any]:
    """Memory per rank, communication per rank and step, and whether the model fits, for a
    catalogue model (matrix elements from the device costs' catalogue plus :data:`NON_MATRIX_PARAMS`)."""
    shapes = costs.get("models", {}).get(model)
    if not shapes:
        raise ValueError(f"no catalogue entry for {model!r} in the device cost constants; known: "
                         f"{', '.join(sorted(costs.get('models', {})))}")
    if model not in NON_MATRIX_PARAMS:
        raise ValueError(f"--zero-stage prices {', '.join(NON_MATRIX_PARAMS)} (their embeddings and norms are known)")
    m = float(sum(s["m"] * s["n"] * s["count"] for s in shapes))
    p = m + NON_MATRIX_PARAMS[model]
    mem = memory_per_rank(p, m, ranks, stage, optimizer, matrix_state, precision)
    fit = costs.get("broadcast") if costs.get("device") == "cpu" else None
    fit = fit or assumed_fit(ranks)
    comm = comm_per_rank(p, m, ranks, stage, optimizer, precision)
    capacity = device_memory(costs, memory_gb)
    return {"model": model, "ranks": ranks, "stage": stage, "optimizer": optimizer, "precision": precision,
            "params": p, "matrix_params": m, "memory": mem, "comm_bytes": comm,
            "comm_s": comm_seconds(comm, ranks, fit, collectives_count(stage, optimizer)),
            "comm_source": fit.get("source", "measured"), "device_memory": capacity,
            "fits": None if capacity is None else bool(mem["total"] <= capacity)}


def format_zero(pred: Mapping[str, Any]) -> str:
    """The answer of ``specbench cost --zero-stage N``, as text."""
    g = 1e9
    mem, comm = pred["memory"], pred["comm_bytes"]
    fits = ("unknown device memory (give --device-memory-gb)" if pred["fits"] is None else
            f"{'fits' if pred['fits'] else 'does NOT fit'} in {pred['device_memory'] / g:.0f} GB")
    return "\n".join([
        f"{pred['model']} ({pred['params'] / 1e9:.2f} B parameters, {pred['matrix_params'] / 1e9:.2f} B in matrices), "
        f"{pred['optimizer']}, ZeRO-{pred['stage']}, P = {pred['ranks']}, {pred['precision']} training",
        f"  memory per rank: params {mem['param_bytes'] / g:.1f} GB + grads {mem['grad_bytes'] / g:.1f} GB + "
        f"state {mem['state_bytes'] / g:.1f} GB + buckets {mem['bucket_bytes'] / g:.1f} GB = {mem['total'] / g:.1f} GB "
        f"(activations not counted): {fits}",
        f"  sent per rank and step: all-reduce {comm['all_reduce'] / g:.2f} GB, reduce-scatter "
        f"{comm['reduce_scatter'] / g:.2f} GB, all-gather {comm['all_gather'] / g:.2f} GB, owner traffic "
        f"{comm['owner'] / g:.2f} GB → {pred['comm_s'] * 1e3:.1f} ms ({pred['comm_source']})",
    ])


def zero_cli(model: str, ranks: int, device_costs: str, stage: int, optimizer: str, precision: str,
             memory_gb: float | None = None) -> int:
    """Print the answer of ``specbench cost --zero-stage N``; 2 with one message on bad input."""
    import sys

    from analysis.cost_model import CostModelError, load_device_costs

    try:
        if ranks < 1 or stage not in (0, 1, 2, 3):
            raise ValueError("--ranks must be at least 1 and --zero-stage one of 0, 1, 2, 3")
        if optimizer not in DEFAULT_MATRIX_STATE:
            raise ValueError(f"--optimizer {optimizer!r}: --zero-stage prices {', '.join(DEFAULT_MATRIX_STATE)}")
        pred = predict_zero(model, load_device_costs(device_costs), ranks, stage, optimizer, precision,
                            memory_gb=memory_gb)
    except (CostModelError, ValueError) as exc:
        print(f"specbench: error: {exc}", file=sys.stderr)
        return 2
    print(format_zero(pred))
    return 0


def report(df: pd.DataFrame, fit: Mapping[str, Any] | None = None) -> str:
    """Markdown: per model and P, memory per rank (MiB, measured; the model's prediction in
    brackets) and step time against ZeRO-0 per optimizer and stage; the whole model's predicted
    memory per rank (extrapolated per block); the communication check."""
    check = check_rows(zero_rows(df), fit)
    if check.empty:
        return "no op = zero rows"
    mib, gib = 2**20, 2**30
    out = []
    for (model, P), g in check.groupby(["model", "ranks"], sort=False):
        first = g.iloc[0]
        out += [f"**{model}** ({first['blocks']} of {first['full_blocks']} blocks measured: "
                f"{first['params'] / 1e6:.1f} M parameters), P = {P}; MiB per rank (largest rank), predicted in "
                "brackets; step = median seconds (slowest rank) and its ratio to ZeRO-0; the extra seconds' "
                "prediction prices only the communication",
                "", "| optimizer | ZeRO | params | grads | state | ZeRO-3 bucket | step s | × ZeRO-0 | "
                f"extra s over ZeRO-0: measured / comm. predicted | whole model ({first['full_params'] / 1e9:.2f} B) GiB/rank, predicted |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in g.sort_values(["label", "zero_stage"]).to_dict("records"):
            out.append(f"| {r['label']} | {r['zero_stage']} | {r['param_bytes'] / mib:.0f} ({r['param_pred'] / mib:.0f}) | "
                       f"{r['grad_bytes'] / mib:.0f} ({r['grad_pred'] / mib:.0f}) | "
                       f"{r['state_bytes'] / mib:.0f} ({r['state_pred'] / mib:.0f}) | {r['bucket_bytes'] / mib:.0f} | "
                       f"{r['step_s']:.2f} | {r['ratio_to_stage0']:.2f} | {r['extra_s_measured']:+.2f} / "
                       f"{r['extra_comm_s_predicted']:+.2f} | {r['full_total_bytes'] / gib:.1f} |")
        out.append("")
    c = check.groupby("label")["matrix_state_c"].first()
    out.append("Fitted client state per matrix element c (bytes): "
               + ", ".join(f"{k} {v:.2f}" for k, v in c.items()))
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    from analysis.cost_model import load_device_costs

    # The gloo broadcast constants fitted on this CPU (configs/profile/distributed_cpu.yaml).
    print(report(pd.read_parquet(sys.argv[1]), load_device_costs(sys.argv[2] if len(sys.argv) > 2 else "cpu-2core")
                 .get("broadcast")))
