"""Shampoo baseline: the suite's own implementation (no package was faithful enough; see below).

Algorithm (Gupta, Koren & Singer 2018, "Shampoo: Preconditioned Stochastic Tensor Optimization",
Algorithm 1 for matrices and Algorithm 2 for order-k tensors), with the practical extensions of
Anil et al. 2020 ("Scalable Second Order Optimization for Deep Learning") as settings. For a
parameter viewed as an order-k tensor W (k = 2 under the default ``conv_view='matrix'``, conv
kernels as out × (in·kh·kw)) with gradient G, at step t:

    for each block B of W (dims > max_preconditioner_dim split into chunks of at most that size)
      and each mode i of B:
        S_i ← β₂·S_i + w·G_(i) G_(i)ᵀ        w = 1 if β₂ = 1 (a sum, Gupta) else 1 − β₂ (EMA)
        every F steps (t mod F = 0):  R_i ← (S_i + ε_i I)^(−1/(2k))    (eigh, ≥ fp32)
        P_B = G_B ×₁ R_1 ×₂ R_2 ⋯ ×_k R_k  (k = 2: R_L G R_R)
    graft: P ← P · ‖D‖_F / ‖P‖_F with D = G (sgd) or G / (√(Σ G²) + δ) (adagrad); none: no rescale
    before the first root computation (t < F): P = D (the graft direction; G if graft is none)
    M ← μ·M + P;  U = μ·M + P (Nesterov) or M
    W ← W·(1 − lr·λ) − lr·U

ε_i = ε·λ_max(S_i) (``epsilon_relative``, the reference implementation's ridge, scale-free) or ε
(absolute). With β₂ = 1, absolute ε, F = 1, graft ``none``, μ = 0, λ = 0 this is exactly Gupta et
al.'s algorithm — L₀ = εI, L_t = L_{t−1} + G_tG_tᵀ, R likewise, W ← W − η L_t^{−1/4} G_t R_t^{−1/4} —
which ``tests/test_optimizers_baselines.py`` checks against a literal float64 transcription.

Why not a package. pytorch-optimizer 4.1.0 ``Shampoo`` is Gupta's algorithm only at momentum 0:
its momentum mixes the raw gradient with the *previous preconditioned update*
(``grad.lerp_(state['momentum_buffer'], momentum)`` then stores the preconditioned gradient as the
buffer), mutates ``p.grad`` in place, and has no grafting or blocking. Its ``ScalableShampoo``
(a port of Anil et al.'s reference) cannot express β₂ = 1 — the summed statistics of both papers
and the reference's default — because its constructor requires β₂ < 1; its SVD root path adds no
ridge, so EMA statistics with decayed εI can give unbounded roots; and its defaults compute the
first preconditioner only at step 1000. heavyball 3.2.1 has no plain Shampoo (only KLShampoo).
Meta's Distributed Shampoo is not on PyPI.

Defaults and how they differ from the papers / Anil et al.'s PyTorch reference
(``google-research/scalable_shampoo/pytorch/shampoo.py``):

================================  ==========  ===============================================
setting                           here        Gupta 2018 / Anil 2020 reference
================================  ==========  ===============================================
exponent per factor               −1/(2k)     same (−1/4 for matrices); no override setting
``beta2`` (statistics)            1.0 (sum)   Gupta: sum; reference: 1.0
``epsilon``                       1e-6, rel.  Gupta: L₀ = εI (absolute, value unstated);
                                              reference: matrix_eps 1e-12 × λ_max ridge
``preconditioning_frequency`` F   10          Gupta: every step; reference default 1 (the
                                              paper's point is computing roots every T steps)
first roots                       step F      reference: step T, identity before (here the
                                              graft direction is used until then, as Meta's
                                              Distributed Shampoo does)
``max_preconditioner_dim``        1024        Gupta: none; reference block_size 128
``graft``                         adagrad     Gupta: none; reference default SGD; δ = 1e-8
                                              (reference diagonal_eps 1e-6)
``momentum`` μ / ``nesterov``     0.9 / true  Gupta: none; reference 0.9 / true
``weight_decay`` λ                0, decoupl. reference: coupled L2 (added to the update)
inverse root                      eigh ≥fp32  reference: coupled Newton iteration, fp32
conv kernels                      matrix view Gupta: order-4 tensor (``conv_view='tensor'``);
                                              reference: merged small dims
================================  ==========  ===============================================

The ``lr`` default 0.01 suits the AdaGrad graft (an AdaGrad-like step size), not the reference's
lr 1.0 with SGD grafting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .layer_types import matrix_shape
from .matrix_base import MatrixOptimizer
from .settings import ShampooSettings
from .spectral import compute_dtype

# --- pure math ---------------------------------------------------------------------------------


def block_sizes(shape: Sequence[int], max_dim: int) -> list[list[int]]:
    """Per dimension, the sizes of its chunks: ⌈d / max_dim⌉ chunks of ``max_dim`` and a remainder."""
    out = []
    for d in shape:
        full, rest = divmod(int(d), max_dim)
        out.append([max_dim] * full + ([rest] if rest else []) if d > max_dim else [int(d)])
    return out


def split_blocks(t: torch.Tensor, sizes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Blocks of ``t`` (views) in row-major block order, ``sizes[i]`` chunking dimension i."""
    blocks = [t]
    for dim, chunks in enumerate(sizes):
        if len(chunks) == 1:
            continue
        blocks = [piece for b in blocks for piece in torch.split(b, list(chunks), dim=dim)]
    return blocks


def merge_blocks(blocks: Sequence[torch.Tensor], sizes: Sequence[Sequence[int]]) -> torch.Tensor:
    """Inverse of :func:`split_blocks`."""
    parts = list(blocks)
    for dim in reversed(range(len(sizes))):
        n = len(sizes[dim])
        if n == 1:
            continue
        parts = [torch.cat(parts[j : j + n], dim=dim) for j in range(0, len(parts), n)]
    assert len(parts) == 1
    return parts[0]


def mode_gram(block: torch.Tensor, mode: int) -> torch.Tensor:
    """G_(i) G_(i)ᵀ: the d_i × d_i contraction of ``block`` with itself over all other modes."""
    unfolded = block.movedim(mode, 0).reshape(block.shape[mode], -1)
    return unfolded @ unfolded.mT


def _eigh(work: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` in ``work``'s dtype, retried in float64 (result cast back) when it
    does not converge; float32 LAPACK fails on some ill-conditioned factors that float64 handles."""
    try:
        return torch.linalg.eigh(work)
    except torch.linalg.LinAlgError:
        if work.dtype == torch.float64:
            raise
        evals, evecs = torch.linalg.eigh(work.to(torch.float64))
        return evals.to(work.dtype), evecs.to(work.dtype)


def inverse_root(stat: torch.Tensor, root: int, epsilon: float, relative: bool) -> torch.Tensor:
    """(S + e·I)^(−1/root) for a symmetric PSD matrix S by eigendecomposition, in ``stat``'s dtype.

    e = ε·λ_max(S) if ``relative`` else ε. Eigenvalues are clamped at 0 before adding e (rounding
    can make them slightly negative); if S + eI is still singular (S = 0 with relative ε, or
    ε = 0), the zero eigen-directions get 0 instead of ∞. In float32 the eigenvalues carry an
    absolute error of ~1e-7·λ_max, below the default relative ridge (1e-6·λ_max).

    Rows of S that are exactly zero (and so, by symmetry, its columns) are eigenvectors with
    eigenvalue 0; only the rest is decomposed, and those rows get e^(−1/root) on the diagonal.
    This is exact, and it is needed: a 3×3 convolution whose input is 1×1 (ResNet-18's last stage
    on 8×8 images) gets gradient only at its kernel's centre tap, so 8 of every 9 rows of its
    (in·kh·kw)-sided factor are zero, and LAPACK's eigh, float32 and float64 alike, did not
    converge on such 1024 × 1024 factors (every Shampoo trial of the vision comparison died at its
    first root before this).
    """
    work = 0.5 * (stat + stat.mT)
    n = work.shape[-1]
    support = work.ne(0).any(dim=-1)
    full = bool(support.all())
    index = support.nonzero().flatten()
    if full:
        evals, evecs = _eigh(work)
    elif index.numel():
        evals, evecs = _eigh(work[index][:, index])
    else:
        evals, evecs = work.new_zeros(0), work.new_zeros(0, 0)
    evals = evals.clamp_min(0)
    lam_max = float(evals.max()) if evals.numel() else 0.0
    ridge = epsilon * lam_max if relative else epsilon
    tiny = torch.finfo(work.dtype).tiny

    def power(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x.clamp_min(tiny) ** (-1.0 / root), torch.zeros_like(x))

    inner = (evecs * power(evals + ridge).unsqueeze(-2)) @ evecs.mT
    if full:
        return inner
    out = torch.diag(power(work.new_full((n,), ridge)))
    out[index.unsqueeze(-1), index] = inner
    return out


def precondition_block(block: torch.Tensor, roots: Sequence[torch.Tensor]) -> torch.Tensor:
    """G ×₁ R_1 ⋯ ×_k R_k for symmetric R_i (k = 2: R_1 G R_2).

    Contracting mode 0 with R moves that mode last, so after k contractions the modes are back in
    their original order.
    """
    out = block
    for r in roots:
        out = torch.tensordot(out, r, dims=([0], [0]))
    return out


# --- the optimizer -----------------------------------------------------------------------------


class Shampoo(MatrixOptimizer):
    """Shampoo on matrix groups + AdamW side-car; see the module docstring for the algorithm.

    Settings: :class:`optimizers.settings.ShampooSettings` (``lr``, ``momentum``, ``nesterov``,
    ``weight_decay``, ``beta2``, ``epsilon``, ``epsilon_relative``, ``preconditioning_frequency``,
    ``max_preconditioner_dim``, ``graft``, ``graft_eps``, ``conv_view`` and the shared
    matrix-optimizer settings).
    """

    settings_model = ShampooSettings

    @staticmethod
    def _view_shape(shape: Sequence[int], conv_view: str) -> tuple[int, ...]:
        """The tensor Shampoo preconditions: out × (in·kh·kw) under ``conv_view='matrix'``, else the shape."""
        return matrix_shape(shape) if conv_view == "matrix" and len(shape) > 2 else tuple(shape)

    def init_state(self, grad: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        """Zero statistics S_i per block and mode; the AdaGrad graft's Σ G² if grafting by AdaGrad."""
        shape = self._view_shape(grad.shape, group["conv_view"])
        dtype = compute_dtype(grad.dtype)
        sizes = block_sizes(shape, group["max_preconditioner_dim"])
        state: dict[str, Any] = {
            "step": 0,
            "block_sizes": sizes,
            "stats": [
                [torch.zeros(d, d, dtype=dtype, device=grad.device) for d in b.shape]
                for b in split_blocks(grad.reshape(shape), sizes)
            ],
            "roots": None,
        }
        if group["graft"] == "adagrad":
            state["graft_sum"] = torch.zeros(shape, dtype=dtype, device=grad.device)
        return state

    def update(self, grad: torch.Tensor, state: dict[str, Any], group: Mapping[str, Any]) -> torch.Tensor:
        """Statistics, roots every F steps, the grafted preconditioned gradient, then momentum."""
        g = grad.reshape(self._view_shape(grad.shape, group["conv_view"])).to(compute_dtype(grad.dtype))
        state["step"] += 1
        sizes = state["block_sizes"]
        blocks = split_blocks(g, sizes)
        beta2 = group["beta2"]
        w = 1.0 if beta2 == 1.0 else 1.0 - beta2
        for stats, block in zip(state["stats"], blocks, strict=True):
            for i, s in enumerate(stats):
                s.mul_(beta2).add_(mode_gram(block, i), alpha=w)
        if state["step"] % group["preconditioning_frequency"] == 0:
            state["roots"] = [
                [inverse_root(s, 2 * len(stats), group["epsilon"], group["epsilon_relative"]) for s in stats]
                for stats in state["stats"]
            ]

        graft_dir: torch.Tensor | None = None
        if group["graft"] == "adagrad":
            acc = state["graft_sum"]
            acc.addcmul_(g, g)
            graft_dir = g / (acc.sqrt() + group["graft_eps"])
        elif group["graft"] == "sgd":
            graft_dir = g
        if state["roots"] is None:
            update = graft_dir if graft_dir is not None else g
        else:
            update = merge_blocks([precondition_block(b, r) for b, r in zip(blocks, state["roots"], strict=True)], sizes)
            if graft_dir is not None:
                update = update * (torch.linalg.vector_norm(graft_dir) / (torch.linalg.vector_norm(update) + 1e-16))

        mu = group["momentum"]
        if mu > 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(update)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(update)
            update = buf * mu + update if group["nesterov"] else buf
        return update
