"""Optimizer step-time benchmark — a command, not a test::

    python -m optimizers.benchmark --out PATH.parquet [--device cpu] [--threads 1] [--repeats 3]

Two measurements in one run, both reported as ratios of measurements *interleaved* in the same
run (the machine may be shared: absolute times drift with the load, ratios of neighbouring
measurements much less):

1. ``op=optimizer_step`` — one full step (AdamW side-car included) of every registered optimizer
   with its default settings (plus Spectral Newton's ``solve`` method) on parameter sets with the
   exact shapes and layer types of ResNet-18 (CIFAR head), ViT-Tiny/16 (224², 10 classes) and one
   GPT-2-small transformer block (the full model is 12 such blocks plus embeddings, which every
   optimizer gives to AdamW), with fixed random gradients. Baseline: AdamW on the same set.
   ``2 × --step-repeats`` steps are timed after 2 untimed warm-up steps (state creation, SOAP's
   first eigendecomposition, Shampoo's first roots); ``time_s`` is their median. Shampoo and
   SOAP do periodic work (inverse roots / eigenbasis refresh) every F = 10 steps by default; to
   measure it without running 10 steps per sample they run here with F = 2, so regular and
   refresh steps alternate, and ``time_s`` is the amortised cost at the default F,
   ((F − 1)·regular + refresh)/F, with both parts in ``regular_step_s`` / ``refresh_step_s``.
   On CPU Muon runs its Newton–Schulz in float32 (``muon[ns_fp32]``): timm's and torch's
   bfloat16 iteration is ~100× slower on CPUs without native bf16 (AVX2 machines).
2. ``op=kernel`` — the four Spectral Newton methods (:func:`optimizers.spectral.spectral_transform`,
   α = 2, d = 0.1, fp32: the dtype SN computes in) against Muon's Newton–Schulz
   (``timm.optim.muon.zeropower_via_newtonschulz``, 5 steps, Keller Jordan's coefficients) in
   fp32, one matrix per call, on every distinct matrix shape (out × in·kh·kw, orientation
   ignored: both transform the smaller side) of the three models; on CUDA also NS in bf16.
   ``op=kernel_model`` sums each method over a model's matrices (count-weighted; GPT-2 small =
   12 blocks). Baseline: ``muon_ns5`` (fp32). ``--repeats`` timed calls after one warm-up call.

On CPU the default is one intra-op thread (``--threads``): on a shared machine OpenMP threads
spin-waiting for descheduled siblings made 2-thread timings up to 80× slower and meaningless.

Writes a Parquet table in the style of the ``profile`` table (columns ``op, method, model,
shape, shape_m, shape_n, count, dtype, device, ranks, threads, time_s, seconds_min, seconds_p25,
seconds_p75, ratio_to_baseline, baseline, repeats, warmup, …``) and prints it as Markdown, with
the Spectral Newton targets evaluated on the GPT-2-small shapes.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from .param_groups import DEFAULT_ADAMW_TYPES

Row = tuple[str, tuple[int, ...], str]  # (parameter name, shape, layer type)

# --- parameter shape sets ----------------------------------------------------------------------


def resnet18_shapes(num_classes: int = 10) -> list[Row]:
    """timm/torchvision ResNet-18 (basic blocks [2, 2, 2, 2]), classifier for ``num_classes``."""
    rows: list[Row] = [("conv1.weight", (64, 3, 7, 7), "conv_stem"), ("bn1.weight", (64,), "norm"),
                       ("bn1.bias", (64,), "bias")]
    cin = 64
    for li, planes in enumerate((64, 128, 256, 512), start=1):
        for bi in range(2):
            p, first_in = f"layer{li}.{bi}", cin if bi == 0 else planes
            rows += [
                (f"{p}.conv1.weight", (planes, first_in, 3, 3), "conv"),
                (f"{p}.bn1.weight", (planes,), "norm"), (f"{p}.bn1.bias", (planes,), "bias"),
                (f"{p}.conv2.weight", (planes, planes, 3, 3), "conv"),
                (f"{p}.bn2.weight", (planes,), "norm"), (f"{p}.bn2.bias", (planes,), "bias"),
            ]
            if li > 1 and bi == 0:
                rows += [(f"{p}.downsample.0.weight", (planes, cin, 1, 1), "conv"),
                         (f"{p}.downsample.1.weight", (planes,), "norm"), (f"{p}.downsample.1.bias", (planes,), "bias")]
        cin = planes
    return rows + [("fc.weight", (num_classes, 512), "head"), ("fc.bias", (num_classes,), "bias")]


def vit_tiny_shapes(num_classes: int = 10, depth: int = 12, dim: int = 192, patch: int = 16, tokens: int = 197) -> list[Row]:
    """timm ``vit_tiny_patch16_224``."""
    rows: list[Row] = [("cls_token", (1, 1, dim), "embedding"), ("pos_embed", (1, tokens, dim), "embedding"),
                       ("patch_embed.proj.weight", (dim, 3, patch, patch), "conv_stem"),
                       ("patch_embed.proj.bias", (dim,), "bias")]
    for b in range(depth):
        p = f"blocks.{b}"
        rows += [
            (f"{p}.norm1.weight", (dim,), "norm"), (f"{p}.norm1.bias", (dim,), "bias"),
            (f"{p}.attn.qkv.weight", (3 * dim, dim), "attn_qkv"), (f"{p}.attn.qkv.bias", (3 * dim,), "bias"),
            (f"{p}.attn.proj.weight", (dim, dim), "attn_out"), (f"{p}.attn.proj.bias", (dim,), "bias"),
            (f"{p}.norm2.weight", (dim,), "norm"), (f"{p}.norm2.bias", (dim,), "bias"),
            (f"{p}.mlp.fc1.weight", (4 * dim, dim), "mlp_up"), (f"{p}.mlp.fc1.bias", (4 * dim,), "bias"),
            (f"{p}.mlp.fc2.weight", (dim, 4 * dim), "mlp_down"), (f"{p}.mlp.fc2.bias", (dim,), "bias"),
        ]
    return rows + [("norm.weight", (dim,), "norm"), ("norm.bias", (dim,), "bias"),
                   ("head.weight", (num_classes, dim), "head"), ("head.bias", (num_classes,), "bias")]


def gpt2_small_block_shapes(dim: int = 768) -> list[Row]:
    """One GPT-2-small transformer block (HF ``Conv1D`` weights are stored in × out)."""
    p = "h.0"
    return [
        (f"{p}.ln_1.weight", (dim,), "norm"), (f"{p}.ln_1.bias", (dim,), "bias"),
        (f"{p}.attn.c_attn.weight", (dim, 3 * dim), "attn_qkv"), (f"{p}.attn.c_attn.bias", (3 * dim,), "bias"),
        (f"{p}.attn.c_proj.weight", (dim, dim), "attn_out"), (f"{p}.attn.c_proj.bias", (dim,), "bias"),
        (f"{p}.ln_2.weight", (dim,), "norm"), (f"{p}.ln_2.bias", (dim,), "bias"),
        (f"{p}.mlp.c_fc.weight", (dim, 4 * dim), "mlp_up"), (f"{p}.mlp.c_fc.bias", (4 * dim,), "bias"),
        (f"{p}.mlp.c_proj.weight", (4 * dim, dim), "mlp_down"), (f"{p}.mlp.c_proj.bias", (dim,), "bias"),
    ]


#: name → (shape rows, how many times the rows occur in the full model, for kernel_model totals)
MODELS: dict[str, tuple[Callable[[], list[Row]], int]] = {
    "resnet18": (resnet18_shapes, 1),
    "vit_tiny": (vit_tiny_shapes, 1),
    "gpt2_small": (gpt2_small_block_shapes, 12),
}
#: optimizers with periodic work: the setting that sets its period, and its default
PERIODIC: dict[str, tuple[str, int]] = {"shampoo": ("preconditioning_frequency", 10),
                                        "soap": ("precondition_frequency", 10)}
STEP_WARMUP = 2


def step_optimizers(device: torch.device) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, registry name, settings) of the optimizer-step comparison."""
    cuda = device.type == "cuda"
    return [
        ("adamw", "adamw", {}),
        ("spectral_newton", "spectral_newton", {}),
        ("spectral_newton[solve]", "spectral_newton", {"method": "solve"}),
        ("muon" if cuda else "muon[ns_fp32]", "muon", {} if cuda else {"ns_dtype": "float32"}),
        ("shampoo", "shampoo", {}),
        ("soap", "soap", {}),
    ]


def kernel_methods(device: torch.device) -> tuple[str, ...]:
    bf16 = ("muon_ns5_bf16",) if device.type == "cuda" else ()
    return ("muon_ns5", *bf16, "svd", "gram", "solve", "polar")


def matrix_view(shape: Sequence[int]) -> tuple[int, int]:
    return int(shape[0]), int(math.prod(shape[1:]))


def matrix_shapes(rows: Sequence[Row]) -> Counter[tuple[int, int]]:
    """Distinct out × rest matrix shapes, oriented tall (m ≥ n), with counts, of the parameters the
    matrix optimizers get (every method works on the smaller side, so orientation is moot)."""
    views = (matrix_view(s) for _, s, t in rows if len(s) >= 2 and t not in DEFAULT_ADAMW_TYPES)
    return Counter((max(v), min(v)) for v in views)


class ParamSet(nn.Module):
    """Parameters with the given shapes (names sanitised: '.' → '__'), N(0, 0.02²) init."""

    def __init__(self, rows: Sequence[Row], device: torch.device, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.layer_types: dict[str, str] = {}
        for name, shape, ltype in rows:
            key = name.replace(".", "__")
            self.register_parameter(key, nn.Parameter((0.02 * torch.randn(shape, generator=gen)).to(device)))
            self.layer_types[key] = ltype

    def set_grads(self, seed: int = 1) -> None:
        gen = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            p.grad = (1e-3 * torch.randn(p.shape, generator=gen)).to(p.device)


def build_optimizer(name: str, model: ParamSet, overrides: dict[str, Any]) -> torch.optim.Optimizer:
    """``optimizers.build`` with the model's exact layer types (the tagger cannot see them here)."""
    from . import registry
    from .muon import Muon
    from .shampoo import Shampoo
    from .soap import SOAP
    from .spectral_newton import SpectralNewton

    if name == "adamw":
        return registry.build("adamw", model, **overrides)
    settings = registry.settings_model(name).model_validate(overrides).model_dump()
    cls = {"spectral_newton": SpectralNewton, "muon": Muon, "shampoo": Shampoo, "soap": SOAP}[name]
    return cls.from_model(model, layer_types=model.layer_types, **settings)


# --- timing ------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(samples: Sequence[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"time_s": statistics.median(samples), "seconds_min": min(samples), "seconds_p25": q[0],
            "seconds_p75": q[2]}


def bench_steps(model_name: str, device: torch.device, repeats: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows_spec, _ = MODELS[model_name]
    rows = rows_spec()
    entries = []
    for label, name, overrides in step_optimizers(device):
        params = ParamSet(rows, device)
        params.set_grads()
        if name in PERIODIC:
            overrides = {**overrides, PERIODIC[name][0]: 2}
        entries.append((label, name, params, build_optimizer(name, params, overrides)))
    samples: dict[str, list[tuple[int, float]]] = {label: [] for label, *_ in entries}
    for step in range(STEP_WARMUP + 2 * repeats):
        for label, _, _, opt in entries:  # interleaved: every optimizer sees the same machine load
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            if step >= STEP_WARMUP:
                samples[label].append((step, time.perf_counter() - t0))
        log(f"  {model_name}: step {step + 1}/{STEP_WARMUP + 2 * repeats}")
    n_matrix = sum(1 for _, s, t in rows if len(s) >= 2 and t not in DEFAULT_ADAMW_TYPES)
    n_params = sum(math.prod(s) for _, s, _ in rows)
    times: dict[str, float] = {}
    out = []
    for label, name, _, _ in entries:
        values = [t for _, t in samples[label]]
        row: dict[str, Any] = {"op": "optimizer_step", "method": label, "model": model_name,
                               "shape": f"{n_matrix} matrices", "count": n_params, "dtype": "fp32",
                               **_summary(values), "baseline": "adamw", "repeats": len(values),
                               "warmup": STEP_WARMUP, "batch": 1}
        if name in PERIODIC:
            period = PERIODIC[name][1]
            by_parity = [statistics.median(t for s, t in samples[label] if s % 2 == k) for k in (0, 1)]
            regular, refresh = min(by_parity), max(by_parity)
            row.update(time_s=((period - 1) * regular + refresh) / period, regular_step_s=regular,
                       refresh_step_s=refresh, period=period)
        times[label] = row["time_s"]
        out.append(row)
    for row in out:
        row["ratio_to_baseline"] = row["time_s"] / times["adamw"]
    return out


def _kernel(method: str, G: torch.Tensor) -> Callable[[], Any]:
    from timm.optim.muon import _COEFFICIENTS, zeropower_via_newtonschulz

    from .spectral import spectral_transform

    if method.startswith("muon_ns5"):
        dtype = torch.bfloat16 if method.endswith("bf16") else torch.float32
        coeffs = _COEFFICIENTS["original"]
        return lambda: zeropower_via_newtonschulz(G, 5, coeffs, dtype=dtype)
    return lambda: spectral_transform(G.unsqueeze(0), 2.0, 0.1, method)


def bench_kernels(model_name: str, device: torch.device, repeats: int, warmup: int,
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows_spec, multiplicity = MODELS[model_name]
    counts = matrix_shapes(rows_spec())
    gen = torch.Generator().manual_seed(0)
    out: list[dict[str, Any]] = []
    methods = kernel_methods(device)
    totals: dict[str, float] = dict.fromkeys(methods, 0.0)
    for (m, n), count in sorted(counts.items()):
        G = (1e-2 * torch.randn(m, n, generator=gen)).to(device)
        calls = {method: _kernel(method, G) for method in methods}
        samples: dict[str, list[float]] = {method: [] for method in methods}
        for rep in range(warmup + repeats):
            for method, fn in calls.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                if rep >= warmup:
                    samples[method].append(time.perf_counter() - t0)
        base = statistics.median(samples["muon_ns5"])
        for method in methods:
            med = statistics.median(samples[method])
            totals[method] += med * count * multiplicity
            out.append({"op": "kernel", "method": method, "model": model_name, "shape": f"{m}x{n}", "shape_m": m,
                        "shape_n": n, "count": count * multiplicity,
                        "dtype": "bf16" if method.endswith("bf16") else "fp32", **_summary(samples[method]),
                        "baseline": "muon_ns5", "ratio_to_baseline": med / base, "repeats": repeats,
                        "warmup": warmup, "batch": 1})
        log(f"  {model_name}: {m}x{n} done")
    for method in methods:
        out.append({"op": "kernel_model", "method": method, "model": model_name,
                    "shape": f"{sum(counts.values()) * multiplicity} matrices",
                    "count": sum(counts.values()) * multiplicity, "dtype": "bf16" if method.endswith("bf16") else "fp32",
                    "time_s": totals[method], "baseline": "muon_ns5",
                    "ratio_to_baseline": totals[method] / totals["muon_ns5"], "repeats": repeats, "warmup": warmup,
                    "batch": 1})
    return out


# --- output ------------------------------------------------------------------------------------


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The Spectral Newton targets on the GPT-2-small shapes (model totals)."""
    tot = {r["method"]: r["time_s"] for r in rows if r["op"] == "kernel_model" and r["model"] == "gpt2_small"}
    if not tot:
        return []
    best = min(("solve", "gram"), key=lambda m: tot[m])
    lines = [
        f"- GPT-2 small, best of solve/gram = {best}: {tot[best] / tot['muon_ns5']:.2f}× Muon's NS (fp32) "
        f"→ {'met' if tot[best] <= tot['muon_ns5'] else 'NOT met'} (target ≤ 1×)",
        f"- GPT-2 small, svd / {best} = {tot['svd'] / tot[best]:.1f}× "
        f"→ {'met' if tot['svd'] >= 4 * tot[best] else 'NOT met'} (target ≥ 4×)",
    ]
    for m in ("solve", "gram", "polar"):
        bf16 = f", {tot[m] / tot['muon_ns5_bf16']:.2f}× NS bf16" if "muon_ns5_bf16" in tot else ""
        lines.append(f"- GPT-2 small, {m}: {tot[m] / tot['muon_ns5']:.2f}× NS fp32{bf16}, svd/{m} = {tot['svd'] / tot[m]:.1f}×")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optimizers.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per kernel and shape (median)")
    parser.add_argument("--step-repeats", type=int, default=2,
                        help="timed optimizer steps = 2 × this, after 2 warm-up steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per kernel and shape")
    parser.add_argument("--skip-steps", action="store_true", help="only the kernel comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 on CPU, torch's default on CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for model in args.models:
        log(f"kernels on {model} shapes")
        rows += bench_kernels(model, device, args.repeats, args.warmup, log)
    if not args.skip_steps:
        for model in args.models:
            log(f"optimizer steps on {model}")
            rows += bench_steps(model, device, args.step_repeats, log)
    common = {"device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "ranks": 1, "threads": torch.get_num_threads(),
              "torch_version": torch.__version__, "started_at": started, "hostname": platform.node()}
    rows = [{**common, **r} for r in rows]

    import pandas as pd

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, args.out)

    cols = ["op", "method", "model", "shape", "count", "dtype", "time_s", "ratio_to_baseline", "baseline", "repeats"]
    step_cols = [*cols[:-1], "regular_step_s", "refresh_step_s", "repeats"]
    print(f"## Optimizer benchmark ({common['device_name']}, {common['threads']} threads, torch {torch.__version__}, "
          f"{time.perf_counter() - t0:.0f} s)\n")
    for op in ("kernel_model", "optimizer_step", "kernel"):
        sel = [r for r in rows if r["op"] == op]
        if sel:
            print(f"### {op}\n\n{to_markdown(sel, step_cols if op == 'optimizer_step' else cols)}\n")
    lines = targets(rows)
    if lines:
        print("### Spectral Newton targets (GPT-2-small shapes)\n\n" + "\n".join(lines) + "\n")
    print(f"Wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
