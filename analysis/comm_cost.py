"""What the owner sharding's communication costs: bucketed broadcasts of parameter values.

A sharded matrix optimizer ends each step with ``OwnerSharding.sync_`` (optimizers/distributed.py):
every owner's new parameter values reach every rank in broadcasts of buckets of at most
``bucket_cap_mb`` (packed per owner, in parameter order; a larger parameter gets a bucket of its
own), issued in order and waited for in order. One bucket of B bytes on P ranks costs

    t(P, B) = r(P)·ℓ + s(P)·B·β        (ℓ: latency per message, β = 1/bandwidth),

where the backend's broadcast algorithm fixes how the message count r and the volume factor s
grow with P:

- gloo, a binomial tree (gloo/broadcast.cc): ⌈log₂ P⌉ rounds, each forwarding the whole buffer:
  r = s = ⌈log₂ P⌉;
- NCCL, a pipelined ring: the first byte crosses P − 1 links, the buffer each link once:
  r = P − 1, s = 1.

The buckets share the links, so a sync costs their sum,

    T_sync(P) = Σ_buckets t(P, B_b).

ℓ and β are fitted on ``op = collective, method = broadcast`` rows (one bucket of B bytes at P
ranks, timed by ``bench.profile.collectives`` through the optimizer's own ``sync_``) by least
squares on relative residuals with ℓ, β ≥ 0 (:func:`analysis.relative_fit.fit_relative_nnls` with
the regressors s(P)·B and r(P)), over every measured P at once. Checks, never fitted on: each
measured P predicted from the others' rows (the P-law), and the ``owner_sync`` and sharded
``spectral_step`` rows, whose bucket plans are recorded, predicted bucket by bucket.

Without measurements the constants are :data:`ASSUMED_NCCL` (stated, flagged in every prediction
that uses them). Reads only Parquet-derived data frames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.relative_fit import fit_relative_nnls

#: Broadcast algorithm of each backend (see the module docstring).
ALGORITHMS: dict[str, str] = {"gloo": "binomial_tree", "nccl": "ring"}

#: Constants assumed when no collective was measured on the device: NCCL's ring over an 8-GPU
#: NVLink node (≈ 360 GB/s per GPU, NVLink 4 on H100/H200) or, across nodes, 400 Gb/s
#: InfiniBand per GPU (≈ 40 GB/s), 10 µs per ring hop.
ASSUMED_NCCL: dict[str, float] = {
    "gpus_per_node": 8,
    "intra_node_Bps": 360e9,
    "inter_node_Bps": 40e9,
    "latency_s": 10e-6,
}


def terms(algorithm: str, ranks: int) -> tuple[float, float]:
    """(r(P), s(P)): how many latencies and how many times the buffer one broadcast costs."""
    p = int(ranks)
    if p <= 1:
        return 0.0, 0.0
    if algorithm == "binomial_tree":
        rounds = float(math.ceil(math.log2(p)))
        return rounds, rounds
    if algorithm == "ring":
        return float(p - 1), 1.0
    raise ValueError(f"unknown broadcast algorithm {algorithm!r}; known: {', '.join(sorted(set(ALGORITHMS.values())))}")


def broadcast_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The usable single-bucket broadcasts: op = collective, method = broadcast, status ok."""
    needed = ("op", "method", "seconds", "bytes", "ranks")
    if df.empty or any(col not in df.columns for col in needed):
        return pd.DataFrame()
    status = df["status"].fillna("ok") if "status" in df.columns else "ok"
    c = df[(df["op"] == "collective") & (df["method"] == "broadcast") & (status == "ok")]
    return c[(c["seconds"] > 0) & (c["bytes"] > 0) & (c["ranks"] > 1)].copy()


def _fit_rows(rows: pd.DataFrame, algorithm: str) -> tuple[float, float]:
    rs = np.array([terms(algorithm, p) for p in rows["ranks"]])
    beta, latency = fit_relative_nnls(rs[:, 1] * rows["bytes"].to_numpy(float), rows["seconds"].to_numpy(float),
                                      x0=rs[:, 0])
    return latency, beta


def bucket_seconds(fit: Mapping[str, Any], ranks: int, nbytes: float) -> float:
    """t(P, B) of one bucket under a fitted (or assumed) broadcast model."""
    r, s = terms(fit["algorithm"], ranks)
    return r * fit["latency_s"] + s * float(nbytes) * fit["seconds_per_byte"]


def sync_seconds(fit: Mapping[str, Any], ranks: int, bucket_bytes: Sequence[float]) -> float:
    """T_sync(P): the sum over the plan's buckets."""
    return float(sum(bucket_seconds(fit, ranks, b) for b in bucket_bytes))


def _relative_errors(fit: Mapping[str, Any], rows: pd.DataFrame) -> np.ndarray:
    pred = np.array([bucket_seconds(fit, p, b) for p, b in zip(rows["ranks"], rows["bytes"], strict=True)])
    return np.abs(pred - rows["seconds"].to_numpy(float)) / rows["seconds"].to_numpy(float)


def fit_broadcast(df: pd.DataFrame) -> dict[str, Any] | None:
    """Fit ℓ and β on the broadcast rows (module docstring); None without rows.

    The document holds the constants, the algorithm, the points, the fit's median and largest
    relative error and ``heldout_by_ranks``: for every measured P (when there are at least two),
    the median relative error on its rows of a fit on the other P's rows.
    """
    rows = broadcast_rows(df)
    if rows.empty:
        return None
    backend = str(rows["backend"].mode().iloc[0]) if "backend" in rows.columns else "gloo"
    rows = rows[rows["backend"] == backend] if "backend" in rows.columns else rows
    algorithm = ALGORITHMS.get(backend, "binomial_tree")
    latency, beta = _fit_rows(rows, algorithm)
    fit: dict[str, Any] = {"backend": backend, "algorithm": algorithm, "latency_s": latency, "seconds_per_byte": beta,
                           "source": "measured", "n": len(rows), "ranks": sorted(int(p) for p in rows["ranks"].unique())}
    rel = _relative_errors(fit, rows)
    fit.update(median_rel_err=float(np.median(rel)), max_rel_err=float(rel.max()),
               points=[[int(p), float(b), float(t)] for p, b, t in zip(rows["ranks"], rows["bytes"], rows["seconds"],
                                                                        strict=True)])
    held = {}
    for p in fit["ranks"] if len(fit["ranks"]) > 1 else []:
        others, mine = rows[rows["ranks"] != p], rows[rows["ranks"] == p]
        lat, b = _fit_rows(others, algorithm)
        held[str(p)] = float(np.median(_relative_errors({**fit, "latency_s": lat, "seconds_per_byte": b}, mine)))
    fit["heldout_by_ranks"] = held
    return fit


def assumed_fit(ranks: int) -> dict[str, Any]:
    """:data:`ASSUMED_NCCL` as a fit document for ``ranks`` (NVLink within a node, IB across)."""
    a = ASSUMED_NCCL
    bandwidth = a["intra_node_Bps"] if ranks <= a["gpus_per_node"] else a["inter_node_Bps"]
    return {"backend": "nccl", "algorithm": "ring", "latency_s": a["latency_s"], "seconds_per_byte": 1 / bandwidth,
            "source": f"assumed NCCL ring: {bandwidth / 1e9:.0f} GB/s, {a['latency_s'] * 1e6:.0f} µs per hop "
                      "(no collective rows for this device)"}


def comm_checks(df: pd.DataFrame, fit: Mapping[str, Any]) -> pd.DataFrame:
    """Predicted against measured syncs whose bucket plans the rows record.

    ``owner_sync`` collectives start after a barrier, so they time the communication alone:
    ``rel_err`` is the prediction's relative error against them. Inside a sharded
    ``spectral_step`` no barrier precedes the sync: the slowest rank's sync (``comm_seconds``)
    includes waiting for the others' compute, and the last rank to arrive finds part of the
    data already sent (``comm_seconds_min``), so the two bracket the transfer: ``in_bracket``
    says whether the prediction lies between them. Columns: kind, ranks, buckets, bytes,
    measured_s (low end for steps), measured_high_s (steps only), predicted_s, rel_err (syncs
    only), in_bracket (steps only), run (the results directory the row came from, when it was
    read from a directory of several)."""
    cols = ["run", "kind", "ranks", "buckets", "bytes", "measured_s", "measured_high_s", "predicted_s", "rel_err",
            "in_bracket"]
    if df.empty or "op" not in df.columns or "bucket_bytes" not in df.columns:
        return pd.DataFrame(columns=cols)
    out = []
    syncs = df[(df["op"] == "collective") & (df["method"] == "owner_sync")]
    steps = df[(df["op"] == "spectral_step") & (df["phase"] == "sharded") & (df["ranks"] > 1)]
    for kind, rows in (("owner_sync", syncs), ("spectral_step", steps)):
        for r in rows.to_dict("records"):
            plan = json.loads(r["bucket_bytes"]) if isinstance(r.get("bucket_bytes"), str) else []
            low = float(r["seconds"] if kind == "owner_sync" else r.get("comm_seconds_min", math.nan))
            if not plan or not low > 0:
                continue
            predicted = sync_seconds(fit, int(r["ranks"]), plan)
            high = float(r["comm_seconds"]) if kind == "spectral_step" else math.nan
            run = Path(r["trial_path"]).parent.parent.name if isinstance(r.get("trial_path"), str) else ""
            out.append({"run": run, "kind": kind, "ranks": int(r["ranks"]), "buckets": len(plan), "bytes": float(sum(plan)),
                        "measured_s": low, "measured_high_s": high, "predicted_s": predicted,
                        "rel_err": abs(predicted - low) / low if kind == "owner_sync" else math.nan,
                        "in_bracket": (low <= predicted <= high) if kind == "spectral_step" else None})
    return pd.DataFrame(out, columns=cols)
