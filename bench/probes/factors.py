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

Two stages, one per pass over the rows (issue 14, point 2: no m × m or n × n factor unless the
side is at most ``sketch_size`` wide; memory O((m + n)·ℓ) per layer):

- ``sketch`` (first pass, directions not yet known): the Frequent Directions sketches of the δ
  and A rows (`bench.probes.sketch`) and, per view, S = Σ_r ‖δ_r‖·‖a_r‖, the size of the summed
  per-row terms that sets the gradient's rank cutoff (`bench.probes.spectrum`); in ``online`` mode
  also G·N = Σ_r δ_r a_rᵀ, the weight gradient from the rows themselves;
- ``project`` (second pass, u_k and v_k known): the projections x_r, y_r and their sums
  (u_kᵀC_δu_k = Σ x²·(R/R′)/N and v_kᵀC_Av_k = Σ y²/R′ exactly, no factor needed), the
  concentration sums, and the Rayleigh–Ritz Grams of the sketched sides.

A call's input and output are kept by the forward hook until its output gradient is known (after
the backward pass), then turned into rows and dropped; im2col patches never outlive the call.
The ``online`` mode keeps them for a whole training step and replays them through both stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bench.probes.layers import ProbedLayer
from bench.probes.phase_timer import PhaseTimer
from bench.probes.sketch import F64, GramSketch


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
    delta: GramSketch  # the δ side (m = the view's rows)
    norms: torch.Tensor  # [S·N·R′/R]: Σ_r ‖δ_r‖‖a_r‖ over kept rows (first pass)
    u: torch.Tensor | None = None  # m × K output-side singular vectors (probe dtype), second pass
    x2: torch.Tensor | None = None  # Σ_r x_r² per k
    y2: torch.Tensor | None = None  # Σ_r y_r² per k
    x2y2: torch.Tensor | None = None  # Σ_r x_r² y_r² per k
    xy: torch.Tensor | None = None  # Σ_r x_r y_r per k

    def set_directions(self, u: torch.Tensor) -> None:
        k = u.shape[1]
        self.u = u
        self.x2, self.y2, self.x2y2, self.xy = (torch.zeros(k, dtype=F64, device=u.device) for _ in range(4))

    def sums(self) -> list[torch.Tensor]:
        """The second pass's per-direction sums (summed over ranks)."""
        return [self.x2, self.y2, self.x2y2, self.xy]  # type: ignore[list-item]


@dataclass
class ModuleFactors:
    """Hooks and sums of one module whose layers need Kronecker quantities.

    Register :meth:`forward_hook` on the module; after the backward of each micro-batch call
    :meth:`consume` with ∂S/∂out of every captured output (``scale`` converts a gradient of some
    other loss into δ = ∂S/∂out). ``stage`` says what consuming does (module docstring).
    """

    module: nn.Module
    module_name: str
    kind: str
    views: list[ViewSums]
    subsample: int
    timer: PhaseTimer
    sketch: GramSketch  # the A side (n)
    stage: str = "sketch"  # sketch | project
    rows_gradient: torch.Tensor | None = None  # Σ_r δ_r a_rᵀ over all rows (m_total × n), online mode
    counts: torch.Tensor = field(init=False)  # [rows R, kept rows R'] (second pass)
    first_counts: torch.Tensor = field(init=False)  # [rows R, kept rows R'] (first pass)
    inputs: list[torch.Tensor] = field(default_factory=list)  # this micro-batch's inputs
    outputs: list[torch.Tensor] = field(default_factory=list)  # this micro-batch's outputs
    _v_all: torch.Tensor | None = None  # n × ΣK input-side singular vectors of all views
    enabled: bool = True  # the forward hook records calls only while enabled

    def __post_init__(self) -> None:
        self.counts = torch.zeros(2, dtype=F64, device=self.sketch.device)
        self.first_counts = torch.zeros(2, dtype=F64, device=self.sketch.device)

    @classmethod
    def create(cls, module: nn.Module, module_name: str, layers: list[ProbedLayer], subsample: int,
               timer: PhaseTimer, sketch_size: int, device: torch.device) -> ModuleFactors:
        """Empty sums for the Kronecker-capable ``layers`` of one module (all share its input)."""
        views = [ViewSums(layer, GramSketch(layer.shape[0], sketch_size, device),
                          torch.zeros(1, dtype=F64, device=device)) for layer in layers]
        return cls(module, module_name, layers[0].kind, views, subsample, timer,
                   GramSketch(layers[0].shape[1], sketch_size, device))

    def set_directions(self, directions: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """(u, v) of every view, in view order, for the second pass."""
        for view, (u, _) in zip(self.views, directions, strict=True):
            view.set_directions(u)
        self._v_all = torch.cat([v for _, v in directions], dim=1)
        self.stage = "project"

    def sketch_tensors(self) -> list[torch.Tensor]:
        """First-pass sums that add over ranks (the sketches themselves are merged, not added)."""
        return ([self.first_counts] + [view.norms for view in self.views]
                + ([self.rows_gradient] if self.rows_gradient is not None else []))

    def project_tensors(self) -> list[torch.Tensor]:
        """Second-pass sums (added over ranks)."""
        return ([self.counts, self.sketch.gram_or_zeros()]
                + [t for view in self.views for t in (*view.sums(), view.delta.gram_or_zeros())])

    def forward_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled:  # another pass (the HVPs' own forwards): not a row of this micro-batch
            return None
        self.inputs.append(args[0].detach())
        self.outputs.append(out)
        # The rest of the network gets a copy: an in-place op downstream (ReLU(inplace=True),
        # `out += identity`) then cannot change the tensor whose gradient defines δ.
        return out.clone()

    def input_rows(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        """A: one row per sample and (kept) position."""
        if self.kind == "conv":
            return conv_input_rows(self.module, x, stride)
        return x.reshape(-1, x.shape[-1])

    def output_rows(self, g: torch.Tensor, stride: int) -> torch.Tensor:
        """δ of all of the module's outputs: one row per sample and (kept) position."""
        return conv_output_rows(g, stride) if self.kind == "conv" else g.reshape(-1, g.shape[-1])

    def consume(self, grads: list[torch.Tensor | None], scale: float = 1.0) -> None:
        """Turn this micro-batch's calls into rows (δ = ``scale`` · grad) and accumulate them."""
        with self.timer.measure(self.module_name, "factor_accumulation"):
            for x, out, g in zip(self.inputs, self.outputs, grads, strict=True):
                g = torch.zeros_like(out) if g is None else g.detach()
                self.add(x, g if scale == 1.0 else g * scale, positions_per_sample(self.kind, out) * int(out.shape[0]))
            self.inputs.clear()
            self.outputs.clear()

    def add(self, x: torch.Tensor, g: torch.Tensor, rows: int) -> None:
        """Accumulate one call: input ``x``, δ-scaled output gradient ``g``, ``rows`` = R of the call."""
        a = self.input_rows(x, self.subsample)
        d_all = self.output_rows(g, self.subsample)
        if self.stage == "sketch":
            self._sketch(a, d_all, rows)
            if self.rows_gradient is not None:
                full_a, full_d = (a, d_all) if self.subsample == 1 else (self.input_rows(x, 1), self.output_rows(g, 1))
                self.rows_gradient += (full_d.T @ full_a).to(F64)
        else:
            self._project(a, d_all, rows)

    def _sketch(self, a: torch.Tensor, d_all: torch.Tensor, rows: int) -> None:
        self.first_counts += torch.tensor([rows, a.shape[0]], dtype=F64, device=self.counts.device)
        self.sketch.update(a)
        a_norm = torch.linalg.vector_norm(a.to(F64), dim=1)
        for view in self.views:
            d = d_all[:, view.layer.rows[0] : view.layer.rows[1]]
            view.delta.update(d)
            view.norms += (torch.linalg.vector_norm(d.to(F64), dim=1) * a_norm).sum()

    def _project(self, a: torch.Tensor, d_all: torch.Tensor, rows: int) -> None:
        assert self._v_all is not None
        self.sketch.project(a)
        y_all = a @ self._v_all
        self.counts += torch.tensor([rows, a.shape[0]], dtype=F64, device=self.counts.device)
        col = 0
        for view in self.views:
            d = d_all[:, view.layer.rows[0] : view.layer.rows[1]]
            view.delta.project(d)
            k = view.u.shape[1]  # type: ignore[union-attr]
            y = y_all[:, col : col + k].to(F64)
            col += k
            x = (d @ view.u).to(F64)
            view.x2 += (x * x).sum(0)
            view.y2 += (y * y).sum(0)
            view.x2y2 += (x * x * y * y).sum(0)
            view.xy += (x * y).sum(0)
