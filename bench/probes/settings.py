"""Settings of the curvature probe (docs/science/quantities.md quantities, §2 γ window).

One typed model, ``extra="forbid"`` like every settings model of the suite, so a typo in a config
is an error before a trial starts instead of a silently ignored key.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ProbeSettings(BaseModel):
    """What the curvature probe measures and how (see `bench.probes.runner.run_probe`)."""

    model_config = ConfigDict(extra="forbid")

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
    hvp_method: Literal["auto", "batched", "loop"] = Field(
        "auto", description="how the K Hessian-vector products of a layer are computed: one "
        "double backward with K-batched directions (batched), one per direction (loop), or "
        "batched with a per-layer fallback to the loop when batching fails (auto)"
    )
    hvp_batch: int = Field(
        20, ge=1, description="most directions per batched double backward; its memory grows "
        "linearly with this (measured on an H200: 60 directions of a d=256 transformer's fused QKV "
        "at once peaked at 32 GiB, the loop at 2.3 GiB)"
    )
    max_factor_dim: int = Field(
        8192, ge=1, description="layers whose m or n exceeds this get σ and h only: an m×m or n×n "
        "Kronecker factor would not fit (e.g. an LM head over a 50k vocabulary); reported as "
        "partially probed"
    )

    @model_validator(mode="after")
    def _micro_not_larger(self) -> ProbeSettings:
        # A micro-batch larger than the batch is harmless, but almost certainly a config mistake.
        if self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) exceeds batch_size ({self.batch_size})"
            )
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of :attr:`dtype`."""
        return torch.float64 if self.dtype == "float64" else torch.float32
