"""Settings of the curvature probe (docs/science/quantities.md quantities, §2 γ window).

One typed model, ``extra="forbid"`` like every settings model of the suite, so a typo in a config
is an error before a trial starts instead of a silently ignored key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # settings are read where torch is not needed (the CLI, reports): imported lazily
    import torch

ProbeMode = Literal["full", "kronecker", "online"]
#: The probe's modes (issue 14): what each measures is in docs/science/quantities.md.
PROBE_MODES: tuple[str, ...] = ("full", "kronecker", "online")


class ProbeSettings(BaseModel):
    """What the curvature probe measures and how (see `bench.probes.runner.run_probe`)."""

    model_config = ConfigDict(extra="forbid")

    mode: ProbeMode = Field(
        "full", description="full: σ_k, exact h_k (Hessian-vector products) and the Kronecker "
        "quantities on the probe batch; kronecker: σ_k and the Kronecker quantities (ρ, Φ, λ, Λ, "
        "h_kron, concentration) on the probe batch, no HVP (two forward/backward passes); online: "
        "the Kronecker quantities from the training step's own forward and backward at each "
        "scheduled probe step (hooks, no extra batch; `specbench probe` uses one pass over the "
        "probe batch instead)"
    )
    alpha_source: Literal["auto", "exact", "kronecker"] = Field(
        "auto", description="the fit Spectral Newton's `measured` alpha policy takes: exact (slope "
        "of log h on log σ, needs mode full), kronecker (α_kron: slope of log h_kron = log Λ + "
        "log Φ on log σ, Theorem 1 without the χ term), auto (exact in mode full, else kronecker)"
    )
    sketch_size: int = Field(
        256, ge=1, description="ℓ: a Kronecker factor side wider than this is never formed; its "
        "top eigenvalues come from an ℓ-row Frequent Directions sketch refined by Rayleigh-Ritz "
        "(memory O(ℓ·(m + n)) per layer; exact while the rows span < ℓ dimensions, otherwise "
        "low by at most the recorded lambda_*_bound). Sides up to ℓ wide use the exact factor"
    )
    h_samples: int | None = Field(
        None, ge=1, description="measure h_k on this many samples of the probe batch (evenly "
        "spaced in it); σ_k and the Kronecker quantities still use the whole batch. None: all"
    )
    bootstrap: int = Field(
        200, ge=0, description="percentile-bootstrap resamples of the HVP pass's micro-batches "
        "for the 95 % interval of each layer's α (alpha_lo, alpha_hi); 0: no interval"
    )

    batch_size: int = Field(
        2048, ge=1, description="samples in the fixed probe batch (docs/science/quantities.md#the-probe-batch-and-the-mean-loss: 2048-4096); "
        "capped at the size of the split"
    )
    micro_batch_size: int = Field(
        256, ge=1, description="samples per forward/backward; bounds memory, does not change results"
    )
    top_k: int = Field(
        20, ge=1, description="singular directions per layer that get an exact HVP (h_k) and the "
        "Kronecker quantities; K = min(top_k, numerical rank of G)"
    )
    gamma_window: int | None = Field(
        None, ge=1, description="also report σ_k up to this k (h and Kronecker columns NaN beyond "
        "top_k) for the wider γ fits of docs/science/fits.md; None: only top_k"
    )
    spatial_subsample: int = Field(
        1, ge=1, description="conv layers: use every s-th output position along each spatial axis "
        "for the Kronecker factors and the concentration ratio (1: all positions). σ and h are "
        "always exact"
    )
    layers: list[str] | None = Field(
        None, description="fnmatch patterns over layer names (e.g. 'blocks.*.attn.qkv.q') or module "
        "names (e.g. 'blocks.*.attn.qkv' selects its q, k and v views); None: every probeable layer"
    )
    dtype: Literal["float64", "float32"] = Field(
        "float32", description="precision of the model's forward, backward and HVPs during the "
        "probe (the model is not modified; parameters are cast for the probe only). Accumulators, "
        "SVD and eigendecompositions are always float64"
    )
    max_layers: int | None = Field(
        None, ge=1, description="probe only the first N selected layers in forward order "
        "(fused q/k/v views count as one layer); None: all"
    )
    seed: int = Field(0, description="seed of the probe batch's sample choice")
    hvp_method: Literal["auto", "fwd_rev", "batched", "loop"] = Field(
        "auto", description="how the K Hessian-vector products of a layer are computed: forward-"
        "over-reverse AD with the K directions vmapped (fwd_rev), one double backward with K-batched "
        "directions (batched), one double backward per direction (loop), or fwd_rev with a per-layer "
        "fallback to the loop when it fails (auto); all exact"
    )
    hvp_batch: int = Field(
        20, ge=1, description="most directions per vmapped call (fwd_rev, batched); its memory grows "
        "linearly with this (measured on an H200: 60 directions of a d=256 transformer's fused QKV "
        "at once peaked at 32 GiB, the loop at 2.3 GiB)"
    )
    max_factor_dim: int | None = Field(
        None, ge=1, description="layers whose m or n exceeds this get σ and h only (reported as "
        "partially probed); None: no limit (wide sides are sketched, see sketch_size)"
    )

    @model_validator(mode="after")
    def _micro_not_larger(self) -> ProbeSettings:
        # A micro-batch larger than the batch is harmless, but almost certainly a config mistake.
        if self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) exceeds batch_size ({self.batch_size})"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> ProbeSettings:
        if self.alpha_source == "exact" and self.mode != "full":
            raise ValueError(f"alpha_source 'exact' needs the exact h_k of mode 'full' (mode is {self.mode!r}); "
                             "use alpha_source 'kronecker' or 'auto'")
        if self.sketch_size < self.top_k:
            raise ValueError(f"sketch_size ({self.sketch_size}) must be at least top_k ({self.top_k}): the "
                             "sketch yields at most sketch_size eigenvalues per factor")
        return self

    @property
    def resolved_alpha_source(self) -> str:
        """``exact`` or ``kronecker``: the fit the ``measured`` α policy takes."""
        if self.alpha_source == "auto":
            return "exact" if self.mode == "full" else "kronecker"
        return self.alpha_source

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of :attr:`dtype`."""
        import torch

        return torch.float64 if self.dtype == "float64" else torch.float32
