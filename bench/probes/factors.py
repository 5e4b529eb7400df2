"""Kronecker factors from module hooks: inputs A, back-propagated errors δ (docs/science/quantities.md).

Notation: the probe's mean loss L averages N loss terms — one per sample for a classifier
(N = B), one per target token for a language model (N = B·T). A layer call produces rows, one per
sample and position (conv: output spatial position; sequence models: token; plain MLPs: one
per sample), R rows in all; with spatial subsampling R' ≤ R of them are kept.

- A (rows × n): the layer input; for convs the im2col patch of each output position
  (``F.unfold``, channel-major then kh, kw, which is the column order of ``weight.reshape(out, -1)``).
- δ (rows × m): **decision (scaling)** δ_r = N · ∂L/∂out_r. The probe runs on micro-batch sums
  S_j = N_j · (micro-batch mean loss) whose total is N·L, so δ_r = ∂S_j/∂out_r: the gradient of
  the summed loss terms w.r.t. the layer output at row r — for a classifier the per-sample loss
  gradient (the "δ scaled by B" of the spec), for an LM head the per-token loss gradient. It does not
  depend on B, on the micro-batch size or on the number of ranks, and the weight gradient is
  exactly G = δᵀA / N.
- C_δ = δᵀδ / N (m × m) and C_A = AᵀA / R (n × n). When every loss term owns one row (MLPs,
  classifier heads, LM layers: R = N) both are the plain means of docs/science/quantities.md. When a term spans
  P > 1 rows (conv positions of one image) this is the KFC normalisation (Grosse & Martens,
  2016): h^kron = (uᵀC_δu)(vᵀC_Av) is then the Kronecker approximation of the empirical Fisher of
  the mean loss — the Fisher of the loss terms, under "spatially uncorrelated derivatives" —
  i.e. of the same Hessian that h measures, so χ = h / h^kron ≈ 1 where the Kronecker model
  holds (measured: χ ≈ 1.0 on the heads of the builtin CNN and transformer). Dividing C_δ by R
  instead would scale h^kron, Λ and χ of a conv layer by the constant P; slopes in k, ρ and Φ
  are unchanged by either choice. With subsampling: C_δ = (R/R') · Σ_kept δδᵀ / N and
  C_A = Σ_kept aaᵀ / R', unbiased for the full-row values.
- Concentration ratio along D_k = u_k v_kᵀ, with x_r = u_kᵀδ_r, y_r = v_kᵀa_r over the kept rows:
  mean_r(x²y²) / (mean_r(x²) · mean_r(y²)). Under the same assumption (R/N)·mean_r(x²y²) is the
  empirical-Fisher curvature along D_k, so the ratio is that curvature over h^kron (exactly so
  when R = N); 1 means the Kronecker independence holds along D_k.
- Consistency check: Σ_r x_r y_r · (R/R') / N = u_kᵀ G v_k = σ_k exactly when nothing is
  subsampled; a mismatch means the hooks saw something other than what the weight multiplied.

Rows are formed as soon as the forward hook fires (A is reduced to AᵀA and to its K projections
y and then dropped), so im2col patches never outlive their layer call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bench.probes.layers import ProbedLayer
from bench.probes.phase_timer import PhaseTimer


def _conv2d_geometry(module: nn.modules.conv._ConvNd) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, dilation) as 2-D pairs; a 1-D conv is a 2-D conv with height 1."""
    k, s, d = module.kernel_size, module.stride, module.dilation
    if len(k) == 1:
        return (1, k[0]), (1, s[0]), (1, d[0])
    return (k[0], k[1]), (s[0], s[1]), (d[0], d[1])


def conv_input_rows(module: nn.modules.conv._ConvNd, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """im2col rows of a conv input: (b · kept positions) × (in · kh · kw).

    ``stride`` keeps every stride-th output position along each spatial axis.
    """
    kernel, step, dilation = _conv2d_geometry(module)
    if x.ndim == 3:  # Conv1d: (b, c, L) → (b, c, 1, L)
        x = x.unsqueeze(2)
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        pad = tuple(module.padding) if len(module.padding) == 2 else (0, module.padding[0])
    else:
        # 'same'/'valid' strings and reflect/replicate/circular modes: pad exactly as the module
        # does (its private, stable field holds the per-side amounts), then unfold unpadded.
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        pad = (0, 0)
    cols = F.unfold(x, kernel, dilation=dilation, padding=pad, stride=step)  # (b, n, L)
    b, n, _ = cols.shape
    h_out = (x.shape[2] + 2 * pad[0] - dilation[0] * (kernel[0] - 1) - 1) // step[0] + 1
    w_out = (x.shape[3] + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) // step[1] + 1
    cols = cols.view(b, n, h_out, w_out)
    if stride > 1:
        cols = cols[:, :, ::stride, ::stride]
    return cols.permute(0, 2, 3, 1).reshape(-1, n)


def conv_output_rows(g: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Rows of a conv output (or its gradient): (b · kept positions) × channels."""
    if g.ndim == 3:
        g = g.unsqueeze(2)
    if stride > 1:
        g = g[:, :, ::stride, ::stride]
    return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])


def positions_per_sample(layer_kind: str, out: torch.Tensor) -> int:
    """P of one call: rows per sample before subsampling (batch-first outputs)."""
    if layer_kind == "conv":
        return int(out[0, 0].numel())
    return int(out[0].numel() // out.shape[-1])


@dataclass
class ViewSums:
    """Accumulated sums of one probed layer (a fused-QKV view or a whole module), float64."""

    layer: ProbedLayer
    u: torch.Tensor  # m × K output-side singular vectors (probe dtype)
    v: torch.Tensor  # n × K input-side singular vectors (probe dtype)
    sdd: torch.Tensor  # Σ δδᵀ over kept rows (m × m)
    x2: torch.Tensor  # Σ_r x_r² per k
    y2: torch.Tensor  # Σ_r y_r² per k
    x2y2: torch.Tensor  # Σ_r x_r² y_r² per k
    xy: torch.Tensor  # Σ_r x_r y_r per k

    def tensors(self) -> list[torch.Tensor]:
        return [self.sdd, self.x2, self.y2, self.x2y2, self.xy]


@dataclass
class ModuleFactors:
    """Hooks and sums of one module whose layers need Kronecker quantities.

    Register :meth:`forward_hook` on the module for the curvature pass; after the backward of
    each micro-batch call :meth:`consume_output_grads` with ∂S/∂out of every captured output.
    """

    module: nn.Module
    module_name: str
    kind: str
    views: list[ViewSums]
    subsample: int
    timer: PhaseTimer
    saa: torch.Tensor = field(init=False)  # Σ a aᵀ over kept rows (n × n)
    counts: torch.Tensor = field(init=False)  # [rows R, kept rows R']
    outputs: list[torch.Tensor] = field(default_factory=list)  # this micro-batch's outputs
    _y: list[torch.Tensor] = field(default_factory=list)  # A·V of each call (kept rows × ΣK)

    def __post_init__(self) -> None:
        n = self.views[0].v.shape[0]
        dev = self.views[0].sdd.device
        self.saa = torch.zeros(n, n, dtype=torch.float64, device=dev)
        self.counts = torch.zeros(2, dtype=torch.float64, device=dev)
        self._v_all = torch.cat([view.v for view in self.views], dim=1)  # n × ΣK

    def tensors(self) -> list[torch.Tensor]:
        """Everything that is summed over micro-batches (and all-reduced over ranks)."""
        return [self.saa, self.counts] + [t for view in self.views for t in view.tensors()]

    def forward_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        with self.timer.measure(self.module_name, "factor_accumulation"):
            x = args[0].detach()
            if self.kind == "conv":
                a = conv_input_rows(module, x, self.subsample)
                kept = int(a.shape[0])
            else:
                a = x.reshape(-1, x.shape[-1])
                kept = int(a.shape[0])
            rows = positions_per_sample(self.kind, out) * int(out.shape[0])
            self.saa += (a.T @ a).to(torch.float64)
            self._y.append(a @ self._v_all)
            self.counts += torch.tensor([rows, kept], dtype=torch.float64, device=self.counts.device)
            self.outputs.append(out)
        # The rest of the network gets a copy: an in-place op downstream (ReLU(inplace=True),
        # `out += identity`) then cannot change the tensor whose gradient defines δ.
        return out.clone()

    def consume_output_grads(self, grads: list[torch.Tensor | None]) -> None:
        """Accumulate C_δ and the concentration sums from ∂S/∂out of this micro-batch's calls."""
        with self.timer.measure(self.module_name, "factor_accumulation"):
            for out, g, y_all in zip(self.outputs, grads, self._y, strict=True):
                g = torch.zeros_like(out) if g is None else g.detach()
                d_all = conv_output_rows(g, self.subsample) if self.kind == "conv" else g.reshape(-1, g.shape[-1])
                col = 0
                for view in self.views:
                    start, stop = view.layer.rows
                    d = d_all[:, start:stop]
                    k = view.u.shape[1]
                    y = y_all[:, col : col + k].to(torch.float64)
                    col += k
                    x = (d @ view.u).to(torch.float64)
                    view.sdd += (d.T @ d).to(torch.float64)
                    view.x2 += (x * x).sum(0)
                    view.y2 += (y * y).sum(0)
                    view.x2y2 += (x * x * y * y).sum(0)
                    view.xy += (x * y).sum(0)
            self.outputs.clear()
            self._y.clear()
