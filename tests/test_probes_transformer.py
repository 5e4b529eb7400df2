"""Attention layers: fused QKV projections are probed as q/k/v views whose h_k matches the dense
Hessian restricted to that block (builtin transformer: nn.Linear ``qkv``; GPT-2: Conv1D
``c_attn`` stored in × out)."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from test_probes_oracle import (  # noqa: F401 - one_thread is an autouse fixture
    check_h_against_dense,
    everything,
    gradient_svd,
    layer_frame,
    one_thread,
    settings,
)
from torch.utils.data import TensorDataset

from bench.data import TaskInfo
from bench.models import build_model
from bench.probes import run_probe
from bench.workload import cross_entropy

LM = cross_entropy
TASK = TaskInfo(kind="lm", vocab_size=11, seq_len=6)


def _tokens(n: int = 12) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 11, (n, 7), generator=gen)
    return TensorDataset(ids[:, :-1].contiguous(), ids[:, 1:].contiguous())


@functools.cache
def _builtin():
    torch.manual_seed(0)
    model = build_model("builtin:transformer", TASK, {"d_model": 8, "n_layer": 1, "n_head": 2}).double()
    data = _tokens()
    return model, data, run_probe(model, LM, data, settings(batch_size=12, micro_batch_size=5), "cpu")


def test_builtin_transformer_qkv_views():
    model, data, result = _builtin()
    df = pd.DataFrame(result.curvature_rows)
    types = df.groupby("layer").layer_type.first().to_dict()
    assert types == {
        "blocks.0.attn.qkv.q": "attn_q", "blocks.0.attn.qkv.k": "attn_k", "blocks.0.attn.qkv.v": "attn_v",
        "blocks.0.attn.proj": "attn_out", "blocks.0.mlp.fc1": "mlp_up", "blocks.0.mlp.fc2": "mlp_down",
        "head": "head",
    }
    depth = df.groupby("layer").depth.first()
    assert depth["blocks.0.attn.qkv.q"] == depth["blocks.0.attn.qkv.v"] < depth["blocks.0.attn.proj"]
    assert (df[df.layer.str.startswith("blocks.0.attn.qkv")].shape_m == 8).all()
    assert (df.positions == 6).all()  # one row per token
    unsupported = {u.name: u.reason for u in result.unsupported}
    assert {"tok_emb", "pos_emb", "blocks.0.ln1", "ln_f"} <= set(unsupported)
    assert "embedding" in unsupported["tok_emb"] and "norm" in unsupported["ln_f"]
    for view, rows in (("q", (0, 8)), ("v", (16, 24))):
        check_h_against_dense(model, data, result, "blocks.0.attn.qkv", rows, LM, layer=f"blocks.0.attn.qkv.{view}")


def test_gpt2_conv1d_c_attn_views():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    wrapped = build_model("hf:gpt2", TASK, {"n_layer": 1, "n_embd": 8, "n_head": 2}).double()
    data = _tokens(8)
    result = run_probe(wrapped, LM, data, settings(batch_size=8, micro_batch_size=3,
                                                   layers=["*.attn.c_attn", "*lm_head"]), "cpu")
    df = pd.DataFrame(result.curvature_rows)
    attn = "model.transformer.h.0.attn.c_attn"
    assert set(df.layer) == {f"{attn}.q", f"{attn}.k", f"{attn}.v"}
    assert (df.shape_m == 8).all() and (df.shape_n == 8).all()
    tied = [u for u in result.unsupported if u.name == "model.lm_head"]
    assert tied and "tied" in tied[0].reason and not tied[0].partial
    check_h_against_dense(wrapped, data, result, attn, (0, 8), LM, layer=f"{attn}.q")
    check_h_against_dense(wrapped, data, result, attn, (8, 16), LM, layer=f"{attn}.k")
    assert (df.grad_check < 1e-12).all()


@pytest.mark.parametrize("layer", ["head", "blocks.0.mlp.fc1", "blocks.0.attn.qkv.v"])
def test_lm_factor_scaling(layer):
    """LM loss terms are tokens: δ = N·∂L/∂out with N = B·T, C_δ = δᵀδ/N, C_A = AᵀA/R (R = N
    rows), computed here by brute force from the full-batch mean loss."""
    model, data, result = _builtin()
    df = layer_frame(result, layer)
    k = len(df)
    module_name, rows = (layer, None) if not layer.endswith(".v") else ("blocks.0.attn.qkv", (16, 24))
    module = dict(model.named_modules())[module_name]
    captured = {}
    handle = module.register_forward_hook(lambda m, a, out: captured.update(inp=a[0], out=out))
    x, y = everything(data)
    try:
        loss = LM(model(x), y)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(loss, captured["out"])
    n_terms = y.numel()
    d = (n_terms * g).reshape(-1, g.shape[-1])
    a = captured["inp"].detach().reshape(-1, captured["inp"].shape[-1])
    rows = rows or (0, d.shape[1])
    d = d[:, rows[0] : rows[1]]
    assert (df.loss_terms == n_terms).all() and (df.samples == len(x)).all() and (df.positions == 6).all()
    c_d, c_a = d.T @ d / n_terms, a.T @ a / a.shape[0]
    s, u, v = gradient_svd(model, module_name, rows, LM, x, y)
    u, v = u[:, :k], v[:, :k]
    np.testing.assert_allclose(torch.linalg.svdvals(d.T @ a / n_terms)[:k].numpy(), s[:k].numpy(), rtol=1e-10)
    np.testing.assert_allclose(df.lambda_delta, torch.linalg.eigvalsh(c_d).flip(0)[:k].numpy(), rtol=1e-10)
    np.testing.assert_allclose(df.lambda_A, torch.linalg.eigvalsh(c_a).flip(0)[:k].numpy(), rtol=1e-10)
    qd = torch.einsum("ik,ij,jk->k", u, c_d, u).numpy()
    qa = torch.einsum("ik,ij,jk->k", v, c_a, v).numpy()
    np.testing.assert_allclose(df.h_kron, qd * qa, rtol=1e-9)
