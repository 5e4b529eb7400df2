"""Curvature probe vs brute force: h_k against the dense Hessian (docs/science/quantities.md), on tiny models.

Also holds the oracles (dense Hessian, per-sample factor rows, im2col by hand) and the tiny
models that the other ``test_probes_*`` files import.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset

from bench.probes import ProbeSettings, run_probe
from bench.workload import cross_entropy
from optimizers.layer_types import from_matrix_view, matrix_view

F64 = torch.float64
CE = cross_entropy  # the workloads' loss: mean over the targets' elements


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class TinyCNN(nn.Module):
    """Zero padding, reflect padding with stride 2, and a dilated Conv1d: every im2col path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(2, 3, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect")
        self.conv_c = nn.Conv1d(4, 5, 3, dilation=2, padding=1)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv_b(torch.tanh(self.conv_a(x))))  # (b, 4, 3, 3)
        x = torch.tanh(self.conv_c(x.flatten(2)))  # (b, 5, 7)
        return self.head(x.mean(-1))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tensors here are tiny, and on a loaded 2-core machine OpenMP
    threads spinning at barriers make the suite several times slower. Imported (and so also
    autouse) by every other test_probes_* module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_data(kind: str, n: int = 24, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        x = torch.randn(n, 5, generator=gen, dtype=F64)
        y = torch.randint(0, 4, (n,), generator=gen)
    else:
        x = torch.randn(n, 2, 5, 5, generator=gen, dtype=F64)
        y = torch.randint(0, 3, (n,), generator=gen)
    return TensorDataset(x, y)


def make_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (TinyMLP() if kind == "mlp" else TinyCNN()).to(F64)


def settings(**kw) -> ProbeSettings:
    base = {"batch_size": 24, "micro_batch_size": 7, "dtype": "float64", "top_k": 20}
    return ProbeSettings(**{**base, **kw})


@functools.cache
def probed(kind: str, subsample: int = 1):
    """(model, data, probe result) of a tiny model with every layer probed, computed once per
    session (the suite must stay fast on a loaded 2-core machine)."""
    model, data = make_model(kind), make_data(kind)
    return model, data, run_probe(model, CE, data, settings(spatial_subsample=subsample), "cpu")


def everything(dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.tensors[0], dataset.tensors[1]


# ---- oracles -----------------------------------------------------------------------------------


def _block_function(model: nn.Module, module_name: str, rows: tuple[int, int], loss_fn, x, y):
    """f(w) = mean loss with rows [start, stop) of the module's out × in weight view replaced by w
    (flattened), plus w0 — the probed block as a function of its own entries."""
    module = dict(model.named_modules())[module_name]
    weight = module.weight.detach()
    view = matrix_view(weight, None, module)
    start, stop = rows
    w0 = view[start:stop].reshape(-1).clone()
    pname = f"{module_name}.weight"

    def f(w: torch.Tensor) -> torch.Tensor:
        full = torch.cat([view[:start], w.view(stop - start, -1), view[stop:]])
        return loss_fn(functional_call(model, {pname: from_matrix_view(full, weight.shape, module)}, (x,)), y)

    return f, w0


def gradient_svd(model, module_name, rows, loss_fn, x, y):
    """σ, U, V of the mean-loss gradient of one layer block (float64, independent of the probe)."""
    f, w0 = _block_function(model, module_name, rows, loss_fn, x, y)
    w = w0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(w), w)
    u, s, vh = torch.linalg.svd(g.view(rows[1] - rows[0], -1))
    return s, u, vh.T


def dense_hessian_h(model, module_name, rows, loss_fn, x, y, u, v) -> np.ndarray:
    """vec(D_k)ᵀ H vec(D_k) with H the dense Hessian of the mean loss w.r.t. the block."""
    f, w0 = _block_function(model, module_name, rows, loss_fn, x, y)
    hess = torch.autograd.functional.hessian(f, w0)
    d = torch.einsum("ik,jk->kij", u, v).reshape(u.shape[1], -1)
    return torch.einsum("ki,ij,kj->k", d, hess, d).numpy()


def layer_frame(result, layer: str) -> pd.DataFrame:
    df = pd.DataFrame(result.curvature_rows)
    return df[df.layer == layer].sort_values("k").reset_index(drop=True)


def check_h_against_dense(model, dataset, result, module_name, rows, loss_fn, layer=None):
    x, y = everything(dataset)
    df = layer_frame(result, layer or module_name)
    df = df[df.h.notna()]
    k = len(df)
    assert k >= 2, "too few directions to compare"
    s, u, v = gradient_svd(model, module_name, rows, loss_fn, x, y)
    np.testing.assert_allclose(df.sigma, s[:k].numpy(), rtol=1e-10)
    oracle = dense_hessian_h(model, module_name, rows, loss_fn, x, y, u[:, :k], v[:, :k])
    scale = np.abs(oracle).max()
    np.testing.assert_allclose(df.h, oracle, rtol=1e-10, atol=1e-12 * scale)


# ---- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["fc1", "fc2", "head"])
def test_h_matches_dense_hessian_mlp(layer):
    model, data, result = probed("mlp")
    m = dict(model.named_modules())[layer].out_features
    check_h_against_dense(model, data, result, layer, (0, m), CE)


@pytest.mark.parametrize("layer", ["conv_a", "conv_b", "conv_c"])
def test_h_matches_dense_hessian_cnn(layer):
    model, data, result = probed("cnn")
    m = dict(model.named_modules())[layer].out_channels
    check_h_against_dense(model, data, result, layer, (0, m), CE)


def test_batched_and_loop_hvp_agree():
    model, data, result = probed("cnn")
    a = pd.DataFrame(result.curvature_rows)  # auto: batched, falling back per layer
    b = pd.DataFrame(run_probe(model, CE, data, settings(hvp_method="loop"), "cpu").curvature_rows)
    c = pd.DataFrame(run_probe(model, CE, data, settings(hvp_method="batched", hvp_batch=2), "cpu").curvature_rows)
    np.testing.assert_allclose(a.h, b.h, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(c.h, b.h, rtol=1e-12, atol=1e-15)


def test_model_is_left_untouched():
    model, data = make_model("cnn"), make_data("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    run_probe(model, CE, data, settings(), "cpu")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
