"""Kronecker factors, alignment ratios and the concentration ratio against brute force
(per-sample output gradients from autograd, im2col by hand), and micro-batching invariance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_probes_oracle import (  # noqa: F401 - one_thread is an autouse fixture
    CE,
    dense_hessian_h,
    everything,
    gradient_svd,
    layer_frame,
    make_data,
    make_model,
    one_thread,
    probed,
    settings,
)
from torch import nn

from bench.probes import run_probe

F64 = torch.float64


def _im2col(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patches of one sample by explicit loops: (positions × in·kh·kw), row-major positions."""
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(1)  # (c, 1, L)
        kh, kw = 1, module.kernel_size[0]
        sh, sw = 1, module.stride[0]
        dh, dw = 1, module.dilation[0]
        pad = (module.padding[0], module.padding[0], 0, 0)
    else:
        kh, kw = module.kernel_size
        sh, sw = module.stride
        dh, dw = module.dilation
        pad = (module.padding[1], module.padding[1], module.padding[0], module.padding[0])
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    xp = F.pad(x.unsqueeze(0), pad, mode=mode)[0]
    h_out = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    w_out = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(h_out):
        for j in range(w_out):
            patch = xp[:, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
            rows.append(patch.reshape(-1))
    return torch.stack(rows), (h_out, w_out)


def brute_force_rows(model, module_name, dataset, stride=1):
    """Per-sample (A rows, δ rows) of one layer: δ = ∂ℓ_i/∂out (per-sample loss), kept positions
    only; also the full number of positions per sample."""
    module = dict(model.named_modules())[module_name]
    captured = {}
    handle = module.register_forward_hook(lambda m, a, out: captured.update(inp=a[0], out=out))
    a_rows, d_rows = [], []
    try:
        x, y = everything(dataset)
        for i in range(len(x)):
            loss = CE(model(x[i : i + 1]), y[i : i + 1])
            (g,) = torch.autograd.grad(loss, captured["out"])
            inp, g = captured["inp"][0].detach(), g[0]
            if isinstance(module, nn.Linear):
                a_rows.append(inp.reshape(-1, inp.shape[-1]))
                d_rows.append(g.reshape(-1, g.shape[-1]))
                positions = a_rows[-1].shape[0]
                continue
            a, (h_out, w_out) = _im2col(module, inp)
            positions = h_out * w_out
            g = g.reshape(g.shape[0], h_out, w_out)
            keep = torch.zeros(h_out, w_out, dtype=torch.bool)
            keep[::stride, ::stride] = True
            a_rows.append(a[keep.reshape(-1)])
            d_rows.append(g.permute(1, 2, 0).reshape(-1, g.shape[0])[keep.reshape(-1)])
    finally:
        handle.remove()
    return torch.cat(a_rows), torch.cat(d_rows), positions


@pytest.mark.parametrize(
    ("kind", "layer", "stride"),
    [("mlp", "fc1", 1), ("mlp", "head", 1), ("cnn", "conv_a", 1), ("cnn", "conv_b", 1),
     ("cnn", "conv_c", 1), ("cnn", "conv_a", 2)],
)
def test_factors_match_brute_force(kind, layer, stride):
    model, data, result = probed(kind, stride)
    df = layer_frame(result, layer)
    k = len(df)
    a, d, positions = brute_force_rows(model, layer, data, stride)
    n_samples = len(data)
    kept = a.shape[0]
    # The documented normalisation: C_δ = (R/R')·Σδδᵀ/B, C_A = Σaaᵀ/R'.
    c_d = d.T @ d * (n_samples * positions / kept) / n_samples
    c_a = a.T @ a / kept
    lam_d = torch.linalg.eigvalsh(c_d).flip(0)[:k].numpy()
    lam_a = torch.linalg.eigvalsh(c_a).flip(0)[:k].numpy()
    s, u, v = gradient_svd(model, layer, (0, d.shape[1]), CE, *everything(data))
    u, v = u[:, :k], v[:, :k]
    qd = torch.einsum("ik,ij,jk->k", u, c_d, u).numpy()
    qa = torch.einsum("ik,ij,jk->k", v, c_a, v).numpy()
    np.testing.assert_allclose(df.lambda_delta, lam_d, rtol=1e-10)
    np.testing.assert_allclose(df.lambda_A, lam_a, rtol=1e-10)
    np.testing.assert_allclose(df.h_kron, qd * qa, rtol=1e-9)
    np.testing.assert_allclose(df.rho_delta, qd / lam_d, rtol=1e-9)
    np.testing.assert_allclose(df.rho_A, qa / lam_a, rtol=1e-9)
    np.testing.assert_allclose(df.positions, positions)
    # Φ, Λ and χ against the brute-force factors and the dense Hessian (not against the probe's
    # own h_kron and h, from which it computes them).
    np.testing.assert_allclose(df.phi, (qd / lam_d) * (qa / lam_a), rtol=1e-9)
    np.testing.assert_allclose(df.lam, lam_d * lam_a, rtol=1e-10)
    h_dense = dense_hessian_h(model, layer, (0, d.shape[1]), CE, *everything(data), u, v)
    np.testing.assert_allclose(df.chi, h_dense / (qd * qa), rtol=1e-8)
    # Concentration ratio, directly in numpy over the kept rows.
    x = d.numpy() @ u.numpy()
    y = a.numpy() @ v.numpy()
    direct = (x**2 * y**2).mean(0) / ((x**2).mean(0) * (y**2).mean(0))
    np.testing.assert_allclose(df.concentration, direct, rtol=1e-10)
    if stride == 1:
        # δᵀA/B is the weight gradient: the scaling of δ is the documented one.
        g = d.T @ a / n_samples
        np.testing.assert_allclose(torch.linalg.svdvals(g)[:k].numpy(), s[:k].numpy(), rtol=1e-10)
        assert (df.grad_check < 1e-12).all()


def test_micro_batching_does_not_change_results():
    model, data, result = probed("cnn")
    one = pd.DataFrame(run_probe(model, CE, data, settings(micro_batch_size=24), "cpu").curvature_rows)
    many = pd.DataFrame(result.curvature_rows)  # micro-batches of 7, 7, 7, 3
    assert list(one.layer) == list(many.layer) and len(one) >= 14
    # Everything but the bootstrap interval, whose resampling units are the micro-batches.
    num = one.select_dtypes("number").columns.drop(["alpha_lo", "alpha_hi"])
    np.testing.assert_allclose(many[num].to_numpy(float), one[num].to_numpy(float), rtol=1e-10, atol=1e-14)


def test_gamma_window_adds_sigma_only_rows():
    model, data = make_model("cnn"), make_data("cnn")
    result = run_probe(model, CE, data, settings(top_k=3, gamma_window=8, layers=["conv_c"]), "cpu")
    df = layer_frame(result, "conv_c")
    assert list(df.k) == list(range(1, 6))  # conv_c's gradient is 5 × 12: rank 5 caps both windows
    assert df.h[:3].notna().all() and df.h[3:].isna().all() and df.h_kron[3:].isna().all()
    s, _, _ = gradient_svd(model, "conv_c", (0, 5), CE, *everything(data))
    np.testing.assert_allclose(df.sigma, s[:5].numpy(), rtol=1e-10)
