"""``measure_kernel``: time, memory and FLOP rate of one optimizer route on one matrix shape.

The methods are the optimizers' own per-matrix code paths, called exactly as training calls
them (so that what the profiler times, and the cost model prices, is what training runs):

==========  ===================================================================================
``svd``     ``optimizers.spectral.spectral_transform_with_stats(G, α=2, d, method="svd")``
``gram``    the same with ``method="gram"`` (Spectral Newton's default route)
``solve``   the same with ``method="solve"`` (α = 2: G (GᵀG + dI)⁻¹ by Cholesky inverse + GEMM)
``polar``   the same with ``method="polar"`` (cubic Newton–Schulz polar factor, then eigh)
``ns5``     Muon's orthogonalisation: ``timm.optim.muon.zeropower_via_newtonschulz`` with the
            settings ``optimizers.muon.Muon`` uses by default (5 steps, the ``original``
            coefficients, ε = ``NS_EPS``), one matrix per call as Muon loops over its matrices
==========  ===================================================================================

Every row is also compared with ``matmul``, the (M × k) @ (k × k) product of the same tall shape
(M = max(m, n), k = min(m, n)): the *ceiling*, timed interleaved with the methods of the shape;
it is not a method (no optimizer runs it alone) and gets no row of its own, only the
``ceiling_*`` and ``efficiency`` columns of the others. Counts are in :mod:`bench.profile.flops`.

Precision. The row's ``dtype`` is the input's. Spectral Newton's routes upcast bf16/fp16 to fp32
inside the call (``optimizers.spectral.compute_dtype``); Muon's Newton–Schulz runs in the input
dtype (``ns_dtype``: bf16 is Muon's default, fp32 what CPUs without native bf16 want). The row
records ``compute_dtype`` and ``upcast``.

Timing. Every call is bracketed by device synchronisation (CUDA kernels are asynchronous;
without it a call's time would be billed to the next). The first call is never timed: it also
measures memory and pays one-time costs (cuSOLVER handles, workspace allocation, LAPACK thread
pools). ``warmup`` counts that call. The reported ``seconds`` is the median of the timed calls;
their min and quartiles are kept to show the spread. The methods of one shape are measured
*interleaved* (:func:`measure_interleaved`: each round times every method once), so that on a
shared machine a burst of foreign load hits all methods of the shape alike and the ratios
between them stay honest; cheap kernels are timed several times per round (:func:`plan_calls`).

Memory (``memory_kind`` says which):

- CUDA: ``torch.cuda.max_memory_allocated`` during the first call minus the memory allocated
  just before it (``cuda_max_allocated_delta``): the workspace the call needed beyond its input.
- CPU: an *analytic* estimate of the tensors the implementation allocates (outputs,
  intermediates, LAPACK copies and work arrays at leading order; ``analytic_workspace``).
  tracemalloc does not see torch's allocator, and the process RSS moves with the allocator's
  caching and other threads, so it is not a per-call measurement. The same estimate is kept on
  CUDA too (``workspace_bytes``) so the two can be compared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median
from typing import Any

import torch

from bench.profile import flops as F
from optimizers.timing import synchronize

METHODS = F.METHODS
#: The reference product every row's efficiency is measured against (not a method).
CEILING = "matmul"
#: Methods whose arithmetic runs in the input dtype; the routes upcast to fp32.
LOW_PRECISION_NATIVE: frozenset[str] = frozenset({CEILING, "ns5"})
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
METHODS_VERSION = F.METHODS_VERSION


def compute_dtype(method: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the method's arithmetic runs in (fp32 for Spectral Newton's routes on bf16)."""
    if method in LOW_PRECISION_NATIVE:
        return dtype
    return torch.promote_types(dtype, torch.float32)


def make_matrix(
    m: int, n: int, *, batch: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    kind: str = "gaussian", seed: int = 0, decay: float = 1.0,
) -> torch.Tensor:
    """A (batch, M, k) tall test matrix.

    ``gaussian``: i.i.d. N(0, 1) entries (cheap at any size). ``power_law``: G = Q₁ diag(σ) Q₂ᵀ
    with σ_i = i^(−decay), Q from QR of Gaussian matrices — a gradient-like decaying spectrum
    (docs/science/fits.md fits σ_k ∝ k^(−γ)); it matters for the Newton–Schulz step count of ``polar``,
    hardly for the dense decompositions.
    """
    device = torch.device(device)
    M, k = F.tall(m, n)
    gen = torch.Generator(device=device).manual_seed(seed)
    if kind == "gaussian":
        G = torch.randn(batch, M, k, generator=gen, device=device, dtype=torch.float32)
    elif kind == "power_law":
        Q1 = torch.linalg.qr(torch.randn(batch, M, k, generator=gen, device=device)).Q
        Q2 = torch.linalg.qr(torch.randn(batch, k, k, generator=gen, device=device)).Q
        sigma = torch.arange(1, k + 1, device=device, dtype=torch.float32) ** (-decay)
        G = (Q1 * sigma) @ Q2.mT
    else:
        raise ValueError(f"unknown matrix kind {kind!r} (gaussian | power_law)")
    return G.to(dtype).contiguous()


def workspace_elements(method: str, M: int, k: int, upcast: bool = False) -> float:
    """Analytic count of the elements a call allocates beyond its input (leading order).

    Follows the implementations: e.g. ``gram`` holds GᵀG, eigh's copy, eigenvectors and
    ``syevd``'s work array (≈ 5k²), the k × k factor and the product back (Mk), plus the fp32
    working copy of G (Mk); ``svd`` holds LAPACK's copy of G and U (2Mk), Vᵀ and work (2k²) and
    the product back. An upcast adds one fp32 copy of G (Mk).
    """
    count = {
        CEILING: M * k,
        "ns5": 2 * M * k + 2 * k * k,
        "svd": 4 * M * k + 2 * k * k,
        "gram": 2 * M * k + 8 * k * k,
        "solve": 2 * M * k + 4 * k * k,
        "polar": 5 * M * k + 8 * k * k,
    }[method]
    return float(count + (M * k if upcast else 0))


# ----------------------------------------------------------------------------------- kernels
def muon_newton_schulz(X: torch.Tensor) -> Callable[[], object]:
    """Muon's per-matrix orthogonalisation of every matrix of the batch ``X``, in X's dtype.

    The call ``optimizers.muon.Muon`` makes with its default settings (a test checks that it
    equals the update one Muon step applies); Muon loops over its matrices, so does this.
    """
    from timm.optim import muon as timm_muon

    from optimizers.muon import NS_EPS
    from optimizers.settings import MuonSettings

    settings = MuonSettings()
    coefficients = timm_muon.resolve_ns_coefficients(settings.ns_coefficients, timm_muon._COEFFICIENTS)

    def run() -> object:
        return [timm_muon.zeropower_via_newtonschulz(G, settings.ns_steps, coefficients, eps=NS_EPS,
                                                      safety_factor=1.0, dtype=X.dtype) for G in X]
    return run


def build_kernel(
    method: str, X: torch.Tensor, *, damping: float = 0.1, alpha: float = 2.0, state: dict[str, Any] | None = None,
) -> Callable[[], object]:
    """A zero-argument callable computing ``method`` on the tall batch ``X`` once.

    ``state`` receives per-call facts (``ns_steps`` and ``fallbacks`` of the routes).
    """
    state = state if state is not None else {}
    if method == CEILING:
        W = torch.randn(*X.shape[:-2], X.shape[-1], X.shape[-1], device=X.device, dtype=X.dtype)
        return lambda: X @ W
    if method == "ns5":
        return muon_newton_schulz(X)
    if method in F.ROUTES:
        from optimizers.spectral import spectral_transform_with_stats

        def transform() -> object:
            res = spectral_transform_with_stats(X, alpha=alpha, damping=damping, method=method)
            state["ns_steps"] = res.ns_steps
            state["fallbacks"] = res.fallbacks
            return res.update
        return transform
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


# --------------------------------------------------------------------------------- measurement
def _time_calls(fn: Callable[[], object], device: torch.device, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted list."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class PreparedKernel:
    """A kernel built on its input and warmed up, ready for timed calls."""

    method: str
    row: dict[str, Any]
    """The row so far (status ``ok`` unless preparing failed)."""
    fn: Callable[[], object] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    first: float = math.nan
    """Seconds of the first (untimed) call."""
    times: list[float] = field(default_factory=list)
    rounds: int = 0
    """Rounds of timed calls this kernel takes part in."""
    inner: int = 1
    """Timed calls per round (more for cheap kernels)."""

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


def _base_row(method: str, m: int, n: int, tdtype: torch.dtype, device: torch.device, *, batch: int,
              matrix: str, warmup: int) -> dict[str, Any]:
    M, k = F.tall(m, n)
    work = compute_dtype(method, tdtype)
    upcast = work != tdtype
    dname = next((key for key, v in DTYPES.items() if v == tdtype), str(tdtype))
    return {
        "op": "kernel", "method": method, "methods_version": METHODS_VERSION, "shape": f"{m}x{n}", "shape_m": m,
        "shape_n": n, "k": k, "batch": batch, "dtype": dname, "compute_dtype": str(work).replace("torch.", ""),
        "upcast": upcast, "device": device.type, "matrix": matrix,
        "workspace_bytes": workspace_elements(method, M, k, upcast) * batch * torch.finfo(work).bits / 8,
        "status": "ok", "error": None, "ns_steps": None, "seconds": math.nan, "repeats": 0,
        "warmup": max(warmup, 1), "matmul_precision": torch.get_float32_matmul_precision(),
    }


def _failed(row: dict[str, Any], exc: BaseException, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    return row


def prepare_kernel(
    method: str,
    X: torch.Tensor,
    shape: tuple[int, int],
    *,
    warmup: int = 1,
    damping: float = 0.1,
    matrix: str = "gaussian",
    repeats: int = 5,
    max_seconds: float | None = None,
) -> PreparedKernel:
    """Build ``method`` on the (batch, M, k) input ``X`` and run its ``warmup`` ≥ 1 untimed calls.

    The first call measures memory (CUDA: peak allocated minus allocated before; CPU: the
    analytic estimate) and its time sets how many timed calls the kernel can afford: when
    ``warmup − 1 + repeats`` further calls would exceed ``max_seconds``, the extra warm-ups are
    dropped (a call that long is warm after one run). A failure (LinAlgError, out of memory)
    gives a kernel with a non-ok row.
    """
    device = X.device
    m, n = int(shape[0]), int(shape[1])
    row = _base_row(method, m, n, X.dtype, device, batch=X.shape[0], matrix=matrix, warmup=warmup)
    pk = PreparedKernel(method, row)
    try:
        pk.fn = build_kernel(method, X, damping=damping, state=pk.state)
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        pk.first = _time_calls(pk.fn, device, 1)[0]
        if device.type == "cuda":
            row["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated(device) - before)
            row["memory_kind"] = "cuda_max_allocated_delta"
        else:
            row["peak_memory_bytes"] = row["workspace_bytes"]
            row["memory_kind"] = "analytic_workspace"
        extra = max(warmup, 1) - 1
        if max_seconds is not None and pk.first * (extra + repeats) > max_seconds:
            extra = 0
        row["warmup"] = 1 + extra
        _time_calls(pk.fn, device, extra)
    except (RuntimeError, ValueError) as exc:  # LinAlgError and OutOfMemoryError are RuntimeErrors
        pk.fn = None
        _failed(row, exc, device)
    return pk


def plan_calls(pk: PreparedKernel, repeats: int, max_seconds: float | None, min_seconds: float,
               max_inner: int = 20) -> None:
    """Set ``rounds`` and ``inner`` of a prepared kernel from its first call's time.

    ``rounds`` = ``repeats``, reduced (≥ 1) when ``repeats`` calls would exceed ``max_seconds``;
    ``inner`` > 1 for cheap kernels, so that at least ``min_seconds`` of calls are timed (up to
    ``max_inner`` per round): a median over more calls is steadier on a shared machine.
    """
    t = max(pk.first, 1e-9)
    pk.rounds = repeats
    if max_seconds is not None and t * repeats > max_seconds:
        pk.rounds = max(1, min(repeats, int(max_seconds / t)))
    pk.inner = 1
    if min_seconds > 0 and t * repeats < min_seconds:
        pk.inner = max(1, min(max_inner, math.ceil(min_seconds / (t * repeats))))


def _ceiling_key(M: int, k: int, batch: int, work: torch.dtype, device: torch.device) -> tuple:
    return (M, k, batch, str(work), device.type)


def finish_row(pk: PreparedKernel, ceiling_cache: dict[tuple, float]) -> dict[str, Any]:
    """Statistics, FLOPs and the efficiency against the shape's ceiling (from ``ceiling_cache``)
    of a kernel whose timed calls are in ``pk.times``."""
    row = pk.row
    if not pk.ok:
        return row
    m, n, batch = row["shape_m"], row["shape_n"], row["batch"]
    M, k = F.tall(m, n)
    method, device = pk.method, torch.device(row["device"])
    ordered = sorted(pk.times)
    seconds = float(median(pk.times))
    ns_steps = pk.state.get("ns_steps") if method == "polar" else (F.NS_STEPS if method == "ns5" else None)
    flops = F.method_flops(method, m, n, batch=batch, ns_steps=ns_steps)
    row.update(
        seconds=seconds, seconds_min=ordered[0], seconds_p25=quantile(ordered, 0.25),
        seconds_p75=quantile(ordered, 0.75), repeats=len(pk.times), rounds=pk.rounds, inner=pk.inner,
        first_call_seconds=pk.first, flops=flops, flops_per_s=flops / seconds if seconds > 0 else math.nan,
        ns_steps=ns_steps, fallbacks=pk.state.get("fallbacks"),
    )
    ceiling = ceiling_cache.get(_ceiling_key(M, k, batch, compute_dtype(method, DTYPES[row["dtype"]]), device),
                                math.nan)
    ceiling_flops = F.method_flops(CEILING, m, n, batch=batch) / ceiling if ceiling > 0 else math.nan
    row.update(
        ceiling_seconds=ceiling, ceiling_flops_per_s=ceiling_flops,
        efficiency=row["flops_per_s"] / ceiling_flops if ceiling_flops > 0 else math.nan,
    )
    return row


def measure_interleaved(
    methods: list[str],
    shape: tuple[int, int],
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    *,
    batch: int = 1,
    damping: float = 0.1,
    matrix: str = "gaussian",
    seed: int = 0,
    ceiling_cache: dict[tuple, float] | None = None,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    X: torch.Tensor | None = None,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Measure several methods on one shape in interleaved rounds; one row per method.

    Every method is prepared and warmed up first, together with the shape's ceiling product
    (one per compute dtype, unless ``ceiling_cache`` already holds it); then each round times
    every kernel once (``inner`` times for cheap ones, see :func:`plan_calls`). A burst of
    foreign load on a shared machine therefore hits every method of the shape alike instead of
    one method's whole run, which keeps the ratios between methods honest; the median over
    rounds discards the bursts. ``deadline`` (a ``time.perf_counter()`` value) stops preparing
    further methods and ends the rounds early (rows keep the calls timed so far; unprepared
    methods are ``skipped``).
    """
    device = torch.device(device)
    tdtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    m, n = int(shape[0]), int(shape[1])
    M, k = F.tall(m, n)
    cache = ceiling_cache if ceiling_cache is not None else {}
    if X is None:
        X = make_matrix(m, n, batch=batch, dtype=tdtype, device=device, kind=matrix, seed=seed)
    ceilings: dict[tuple, PreparedKernel] = {}
    for work in dict.fromkeys(compute_dtype(method, tdtype) for method in methods):
        key = _ceiling_key(M, k, batch, work, device)
        if key not in cache:
            ceilings[key] = prepare_kernel(CEILING, X.to(work), (m, n), warmup=warmup, matrix=matrix,
                                           repeats=repeats, max_seconds=max_seconds)
    kernels: list[PreparedKernel] = []
    for method in methods:
        if deadline is not None and time.perf_counter() > deadline:
            row = _base_row(method, m, n, tdtype, device, batch=batch, matrix=matrix, warmup=warmup)
            row.update(status="skipped", error="time budget spent")
            kernels.append(PreparedKernel(method, row))
            continue
        kernels.append(prepare_kernel(method, X, (m, n), warmup=warmup, damping=damping, matrix=matrix,
                                      repeats=repeats, max_seconds=max_seconds))
    live = [pk for pk in (*ceilings.values(), *kernels) if pk.ok]
    for pk in live:
        plan_calls(pk, repeats, max_seconds, min_seconds)
    for r in range(max((pk.rounds for pk in live), default=0)):
        if r > 0 and deadline is not None and time.perf_counter() > deadline:
            break
        for pk in live:
            if r < pk.rounds:
                pk.times += _time_calls(pk.fn, device, pk.inner)
    for key, pk in ceilings.items():
        if pk.ok and pk.times:
            cache[key] = float(median(pk.times))
        pk.fn = None
    for pk in kernels:
        finish_row(pk, cache)
        pk.fn = None  # release the closures (and their operands)
    return [pk.row for pk in kernels]


def measure_kernel(
    method: str,
    shape: tuple[int, int],
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """Measure one method on a batch of matrices of ``shape`` = (m, n): :func:`measure_interleaved`
    with a single method (same ``options``).

    The row (``op = kernel``) holds ``seconds`` (median of the timed calls),
    ``seconds_min``/``seconds_p25``/``seconds_p75``, ``flops`` (closed form of
    :mod:`bench.profile.flops`), ``flops_per_s``, ``ceiling_seconds`` and ``ceiling_flops_per_s``
    (the (M × k) @ (k × k) product of the same shape, batch and compute dtype),
    ``efficiency`` = achieved / ceiling FLOP/s, ``peak_memory_bytes`` and ``memory_kind``,
    ``workspace_bytes`` (analytic), ``compute_dtype``/``upcast``, ``ns_steps``, and
    ``status`` = ok | error | skipped with ``error``.
    """
    return measure_interleaved([method], shape, dtype, device, repeats, warmup, **options)[0]
