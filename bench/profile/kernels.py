"""``measure_kernel``: the time, memory and FLOP rate of one spectral kernel on one matrix shape.

Methods (every one runs on the tall M × k form, M = max(m, n), k = min(m, n), as the
optimizer does; counts in :mod:`bench.profile.flops`):

==================  ===========================================================================
``matmul``          (M × k) @ (k × k): the matmul *ceiling* of the shape (the Gram-size product)
``svd``             ``torch.linalg.svd(G, full_matrices=False)``, default driver
``svd:<driver>``    the same with ``driver=`` gesvd | gesvdj | gesvda (CUDA only: torch accepts
                    ``driver`` only for cuSOLVER)
``svd_lowrank``     ``torch.svd_lowrank(G, q=top_k, niter)``: randomized top-k SVD
``gram_eigh``       A = GᵀG, ``torch.linalg.eigh(A)``: the Gram eigendecomposition
``damped_solve``    the complete α = 2 update G (GᵀG + dI)⁻¹ by Cholesky
``ns5``             Muon's 5-step quintic Newton–Schulz (approximate polar factor)
``transform:<r>``   ``optimizers.spectral.spectral_transform(G, α=2, d, method=r)``, r in
                    gram | solve | polar | svd: the optimizer's own complete update path
==================  ===========================================================================

Precision. ``matmul`` and ``ns5`` run natively in bf16 when asked (that is how Muon runs
Newton–Schulz). The decompositions have no bf16 kernels: a bf16 request feeds them a bf16
matrix that they upcast to fp32 inside the timed region (the ``transform:*`` routes do this
themselves), and the row records ``compute_dtype = float32`` and ``upcast = True``.

Timing. Every call is bracketed by device synchronisation (CUDA kernels are asynchronous;
without it a call's time would be billed to the next). The first call is never timed: it also
measures memory and pays one-time costs (cuSOLVER handles, workspace allocation, LAPACK thread
pools). ``warmup`` counts that call. The reported ``seconds`` is the median of the timed calls;
their min and quartiles are kept to show the spread. Several methods of one shape are measured
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

SVD_DRIVERS: tuple[str, ...] = ("gesvd", "gesvdj", "gesvda")
TRANSFORM_ROUTES: tuple[str, ...] = ("gram", "solve", "polar", "svd")
METHODS: tuple[str, ...] = (
    "matmul",
    "svd",
    *(f"svd:{d}" for d in SVD_DRIVERS),
    "svd_lowrank",
    "gram_eigh",
    "damped_solve",
    "ns5",
    *(f"transform:{r}" for r in TRANSFORM_ROUTES),
)
#: Methods with a native bf16 path; everything else upcasts to fp32.
LOW_PRECISION_NATIVE: frozenset[str] = frozenset({"matmul", "ns5"})
#: Methods torch offers on CUDA only.
CUDA_ONLY: frozenset[str] = frozenset(f"svd:{d}" for d in SVD_DRIVERS)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class KernelUnsupported(RuntimeError):
    """The method cannot run in this configuration (e.g. an SVD driver on CPU)."""


def compute_dtype(method: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the method's arithmetic runs in (fp32 for decompositions of bf16/fp16 input)."""
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
    (PAPER.md §2 fits σ_k ∝ k^(−γ)); it matters for the Newton–Schulz step count of
    ``transform:polar``, hardly for the dense decompositions.
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


def workspace_elements(method: str, M: int, k: int, q: int = F.LOWRANK_Q, upcast: bool = False) -> float:
    """Analytic count of the elements a call allocates beyond its input (leading order).

    Follows the implementations: e.g. ``gram_eigh`` holds A (k²), eigh's input copy, eigenvectors
    and ``syevd``'s work array (≈ 2k²): 5k²; ``svd`` holds LAPACK's copy of G and U (2Mk), Vᵀ and
    work (2k²). An upcast adds one fp32 copy of G (Mk).
    """
    q = min(q, k)
    base = {
        "matmul": M * k,
        "svd_lowrank": 4 * M * q + 2 * k * q + q * q,
        "gram_eigh": 5 * k * k,
        "damped_solve": 2 * M * k + 2 * k * k,
        "ns5": 4 * M * k + 3 * k * k,
        "transform:gram": 2 * M * k + 8 * k * k,
        "transform:solve": 2 * M * k + 4 * k * k,
        "transform:polar": 5 * M * k + 8 * k * k,
        "transform:svd": 4 * M * k + 2 * k * k,
    }
    if method == "svd" or method.startswith("svd:"):
        count = 2 * M * k + 2 * k * k + k
    else:
        count = base[method]
    return float(count + (M * k if upcast else 0))


# ----------------------------------------------------------------------------------- kernels
def _ns5(X: torch.Tensor, steps: int = F.NS_STEPS) -> torch.Tensor:
    """Muon's quintic Newton–Schulz on a tall (…, M, k) batch, in X's dtype.

    Works on the wide k × M form so that A = X Xᵀ is the small k × k Gram matrix, as Muon does.
    """
    a, b, c = F.NS_QUINTIC
    Y = X.mT
    Y = Y / (torch.linalg.matrix_norm(Y, keepdim=True) + 1e-7)
    for _ in range(steps):
        A = Y @ Y.mT
        B = b * A + c * (A @ A)
        Y = a * Y + B @ Y
    return Y.mT


def _damped_solve(X: torch.Tensor, damping: float) -> torch.Tensor:
    """ΔW = G (GᵀG + dI)⁻¹ = ((GᵀG + dI)⁻¹ Gᵀ)ᵀ by Cholesky."""
    A = X.mT @ X
    A.diagonal(dim1=-2, dim2=-1).add_(damping)
    L = torch.linalg.cholesky(A)
    return torch.cholesky_solve(X.mT, L).mT


def build_kernel(
    method: str,
    X: torch.Tensor,
    *,
    top_k: int = F.LOWRANK_Q,
    niter: int = F.LOWRANK_NITER,
    damping: float = 0.1,
    alpha: float = 2.0,
    state: dict[str, Any] | None = None,
) -> Callable[[], object]:
    """A zero-argument callable computing ``method`` on the tall batch ``X`` once.

    ``state`` receives per-call facts (``ns_steps`` of ``transform:polar``).
    """
    state = state if state is not None else {}
    if method in CUDA_ONLY and X.device.type != "cuda":
        raise KernelUnsupported(f"{method}: torch.linalg.svd accepts a driver only on CUDA")
    work = compute_dtype(method, X.dtype)

    def up(T: torch.Tensor) -> torch.Tensor:
        # The upcast is part of the method's cost when the input is bf16: it is inside the call.
        return T if T.dtype == work else T.to(work)

    if method == "matmul":
        W = torch.randn(*X.shape[:-2], X.shape[-1], X.shape[-1], device=X.device, dtype=X.dtype)
        return lambda: X @ W
    if method == "svd" or method.startswith("svd:"):
        driver = method.split(":", 1)[1] if ":" in method else None
        return lambda: torch.linalg.svd(up(X), full_matrices=False, driver=driver)
    if method == "svd_lowrank":
        q = min(top_k, X.shape[-1])
        return lambda: torch.svd_lowrank(up(X), q=q, niter=niter)
    if method == "gram_eigh":
        def gram_eigh() -> object:
            Xw = up(X)
            return torch.linalg.eigh(Xw.mT @ Xw)
        return gram_eigh
    if method == "damped_solve":
        return lambda: _damped_solve(up(X), damping)
    if method == "ns5":
        return lambda: _ns5(X)
    if method.startswith("transform:"):
        from optimizers.spectral import spectral_transform_with_stats

        route = method.split(":", 1)[1]
        if route not in TRANSFORM_ROUTES:
            raise ValueError(f"unknown spectral_transform route {route!r}")

        def transform() -> object:
            res = spectral_transform_with_stats(X, alpha=alpha, damping=damping, method=route)
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
              top_k: int, niter: int, matrix: str, warmup: int) -> dict[str, Any]:
    M, k = F.tall(m, n)
    work = compute_dtype(method, tdtype)
    upcast = work != tdtype
    dname = next((key for key, v in DTYPES.items() if v == tdtype), str(tdtype))
    return {
        "op": "kernel", "method": method, "shape": f"{m}x{n}", "shape_m": m, "shape_n": n, "k": k,
        "batch": batch, "dtype": dname, "compute_dtype": str(work).replace("torch.", ""), "upcast": upcast,
        "device": device.type, "top_k": min(top_k, k) if method == "svd_lowrank" else None,
        "niter": niter if method == "svd_lowrank" else None, "matrix": matrix,
        "workspace_bytes": workspace_elements(method, M, k, top_k, upcast) * batch * torch.finfo(work).bits / 8,
        "status": "ok", "error": None, "ns_steps": None, "seconds": math.nan, "repeats": 0,
        "warmup": max(warmup, 1), "matmul_precision": torch.get_float32_matmul_precision(),
    }


def _failed(row: dict[str, Any], exc: BaseException, device: torch.device) -> dict[str, Any]:
    if isinstance(exc, KernelUnsupported):
        row.update(status="unsupported", error=str(exc))
    else:
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
    top_k: int = F.LOWRANK_Q,
    niter: int = F.LOWRANK_NITER,
    damping: float = 0.1,
    matrix: str = "gaussian",
    repeats: int = 5,
    max_seconds: float | None = None,
) -> PreparedKernel:
    """Build ``method`` on the (batch, M, k) input ``X`` and run its ``warmup`` ≥ 1 untimed calls.

    The first call measures memory (CUDA: peak allocated minus allocated before; CPU: the
    analytic estimate) and its time sets how many timed calls the kernel can afford: when
    ``warmup − 1 + repeats`` further calls would exceed ``max_seconds``, the extra warm-ups are
    dropped (a call that long is warm after one run). A failure (LinAlgError, out of memory,
    unsupported driver) gives a kernel with a non-ok row.
    """
    device = X.device
    m, n = int(shape[0]), int(shape[1])
    row = _base_row(method, m, n, X.dtype, device, batch=X.shape[0], top_k=top_k, niter=niter, matrix=matrix,
                    warmup=warmup)
    pk = PreparedKernel(method, row)
    try:
        pk.fn = build_kernel(method, X, top_k=top_k, niter=niter, damping=damping, state=pk.state)
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


def finish_row(
    pk: PreparedKernel,
    *,
    top_k: int = F.LOWRANK_Q,
    niter: int = F.LOWRANK_NITER,
    ceiling_cache: dict[tuple, float] | None = None,
) -> dict[str, Any]:
    """Statistics, FLOPs and the matmul ceiling of a kernel whose timed calls are in ``pk.times``."""
    row = pk.row
    if not pk.ok:
        return row
    m, n, batch = row["shape_m"], row["shape_n"], row["batch"]
    M, k = F.tall(m, n)
    method, device = pk.method, torch.device(row["device"])
    ordered = sorted(pk.times)
    seconds = float(median(pk.times))
    if method == "transform:polar":
        ns_steps = pk.state.get("ns_steps")
    else:
        ns_steps = F.NS_STEPS if method == "ns5" else None
    flops = F.method_flops(method, m, n, batch=batch, top_k=top_k, niter=niter, ns_steps=ns_steps)
    row.update(
        seconds=seconds, seconds_min=ordered[0], seconds_p25=quantile(ordered, 0.25),
        seconds_p75=quantile(ordered, 0.75), repeats=len(pk.times), rounds=pk.rounds, inner=pk.inner,
        first_call_seconds=pk.first, flops=flops, flops_per_s=flops / seconds if seconds > 0 else math.nan,
        ns_steps=ns_steps, fallbacks=pk.state.get("fallbacks"),
    )
    # The ceiling: the same-size matmul at the compute dtype, measured in this process once per shape.
    work = compute_dtype(method, DTYPES[row["dtype"]])
    key = (M, k, batch, str(work), device.type)
    cache = ceiling_cache if ceiling_cache is not None else {}
    if method == "matmul":
        cache[key] = seconds
    elif key not in cache:
        ref = measure_kernel("matmul", (M, k), work, device, repeats=5, warmup=1, batch=batch)
        cache[key] = ref["seconds"]
    ceiling = cache[key]
    ceiling_flops = F.method_flops("matmul", m, n, batch=batch) / ceiling if ceiling > 0 else math.nan
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
    top_k: int = F.LOWRANK_Q,
    niter: int = F.LOWRANK_NITER,
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

    Every method is prepared and warmed up first; then each round times every method once
    (``inner`` times for cheap ones, see :func:`plan_calls`). A burst of foreign load on a shared
    machine therefore hits every method of the shape alike instead of one method's whole run,
    which keeps the ratios between methods honest; the median over rounds discards the bursts.
    ``deadline`` (a ``time.perf_counter()`` value) stops preparing further methods and ends the
    rounds early (rows keep the calls timed so far; unprepared methods are ``skipped``).
    """
    device = torch.device(device)
    tdtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    m, n = int(shape[0]), int(shape[1])
    if X is None:
        X = make_matrix(m, n, batch=batch, dtype=tdtype, device=device, kind=matrix, seed=seed)
    kernels: list[PreparedKernel] = []
    for method in methods:
        if deadline is not None and time.perf_counter() > deadline:
            row = _base_row(method, m, n, tdtype, device, batch=batch, top_k=top_k, niter=niter, matrix=matrix,
                            warmup=warmup)
            row.update(status="skipped", error="time budget spent")
            kernels.append(PreparedKernel(method, row))
            continue
        pk = prepare_kernel(method, X, (m, n), warmup=warmup, top_k=top_k, niter=niter, damping=damping,
                            matrix=matrix, repeats=repeats, max_seconds=max_seconds)
        if pk.ok:
            plan_calls(pk, repeats, max_seconds, min_seconds)
        kernels.append(pk)
    live = [pk for pk in kernels if pk.ok]
    for r in range(max((pk.rounds for pk in live), default=0)):
        if r > 0 and deadline is not None and time.perf_counter() > deadline:
            break
        for pk in live:
            if r < pk.rounds:
                pk.times += _time_calls(pk.fn, device, pk.inner)
    # matmul first: the other rows of the shape take their ceiling from it.
    order = sorted(kernels, key=lambda pk: pk.method != "matmul")
    for pk in order:
        finish_row(pk, top_k=top_k, niter=niter, ceiling_cache=ceiling_cache)
        pk.fn = None  # release the closures (and their matmul operands)
    return [pk.row for pk in kernels]


def measure_kernel(
    method: str,
    shape: tuple[int, int],
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    *,
    batch: int = 1,
    top_k: int = F.LOWRANK_Q,
    niter: int = F.LOWRANK_NITER,
    damping: float = 0.1,
    matrix: str = "gaussian",
    seed: int = 0,
    ceiling_cache: dict[tuple, float] | None = None,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    X: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Measure one kernel on a batch of ``batch`` matrices of ``shape`` = (m, n).

    Returns a row of the ``profile`` table (op ``kernel``) with: ``seconds`` (median of the
    timed calls), ``seconds_min``/``seconds_p25``/``seconds_p75``, ``flops`` (closed form of
    :mod:`bench.profile.flops`), ``flops_per_s`` = flops / seconds, ``ceiling_seconds`` and
    ``ceiling_flops_per_s`` (the (M × k) @ (k × k) matmul of the same shape, batch and compute
    dtype, measured in this process — cached in ``ceiling_cache`` across calls),
    ``efficiency`` = achieved / ceiling FLOP/s, ``peak_memory_bytes`` and ``memory_kind``,
    ``workspace_bytes`` (analytic), ``compute_dtype``/``upcast``, ``ns_steps``, and
    ``status`` = ok | error | unsupported with ``error``.

    ``warmup`` ≥ 1 untimed calls (the first also measures memory), then ``repeats`` timed calls,
    fewer (≥ 1) when they would exceed ``max_seconds``, more when they would take less than
    ``min_seconds`` (:func:`plan_calls`); ``repeats`` in the row is the number actually timed.
    ``X`` reuses a prepared (batch, M, k) input.
    """
    return measure_interleaved(
        [method], shape, dtype, device, repeats, warmup, batch=batch, top_k=top_k, niter=niter, damping=damping,
        matrix=matrix, seed=seed, ceiling_cache=ceiling_cache, max_seconds=max_seconds, min_seconds=min_seconds,
        X=X,
    )[0]
