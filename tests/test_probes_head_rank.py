"""A softmax head's gradient has exact rank ≤ c − 1; on a well-fit model the probe must not count
the round-off left in the null direction as a c-th direction (issue 14, point 4)."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from test_probes_oracle import CE, one_thread, settings  # noqa: F401 - one_thread is an autouse fixture
from torch import nn
from torch.utils.data import TensorDataset

from bench.probes import run_probe
from bench.probes.measured_alpha import layer_alpha

CLASSES = 10


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc(x)))


@functools.cache
def _well_fit() -> tuple[nn.Module, TensorDataset]:
    """sklearn digits (1797 real images, 10 classes), full-batch Adam to train loss ~8e-4."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x, y = torch.tensor(images / 16.0, dtype=torch.float64), torch.tensor(labels)
    torch.manual_seed(0)
    model = DigitsMLP().double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1000):
        opt.zero_grad()
        loss = CE(model(x), y)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 2e-3
    return model, TensorDataset(x, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_well_fit_softmax_head_keeps_only_c_minus_1_directions(dtype):
    model, data = _well_fit()
    result = run_probe(model, CE, data, settings(batch_size=len(data), micro_batch_size=600, dtype=dtype,
                                                 layers=["head"], gamma_window=CLASSES), "cpu")
    df = pd.DataFrame(result.curvature_rows)
    assert len(df) == CLASSES - 1 and df.h.notna().all()  # the 10th direction is round-off: not a row
    # The oracle: the head's gradient in float64, by autograd on the whole batch; its 10th
    # singular value is round-off (1ᵀG = 0 exactly). The old cutoff σ₁·max(m, n)·ε kept a 10th
    # row in both dtypes (measured: σ₁₀ = 4e-9 in float32, 2e-18 in float64, both above it).
    x, y = data.tensors
    w = model.head.weight.detach().clone().requires_grad_(True)
    hidden = torch.tanh(model.fc(x)).detach()
    (g,) = torch.autograd.grad(CE(hidden @ w.T + model.head.bias.detach(), y), w)
    sigma = torch.linalg.svdvals(g).numpy()
    eps = torch.finfo(getattr(torch, dtype)).eps
    assert sigma[-1] < 1e-12 * sigma[0]
    np.testing.assert_allclose(df.sigma, sigma[:-1], rtol=1e-4 if dtype == "float32" else 1e-10)
    # The new cutoff ε·max(m, n)·S, S the summed per-row term norms, is far above the cancelled
    # sum's σ₁ on this well-fit model, and far below the real directions.
    new_cutoff = float(df.term_scale.iloc[0]) * 32 * eps
    assert float(df.term_scale.iloc[0]) > 10 * sigma[0] and new_cutoff < 1e-3 * sigma[-2]
    # α from the 9 real directions lies inside its bootstrap interval over the probe's blocks.
    alpha = layer_alpha(list(df.sigma), list(df.h))
    assert alpha is not None and df.alpha_lo.iloc[0] < alpha < df.alpha_hi.iloc[0]
