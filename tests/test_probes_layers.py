"""Layer selection: what is probed, what is reported unsupported (never skipped silently), eval
mode during the probe, settings and the probe batch."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pydantic
import pytest
import torch
import torch.nn.functional as F
from test_probes_oracle import CE, make_data, make_model, one_thread, settings  # noqa: F401 - autouse fixture
from torch import nn
from torch.utils.data import TensorDataset

from bench.probes import ProbeBatch, ProbeSettings, run_probe

F64 = torch.float64


class Zoo(nn.Module):
    """One of each kind of weight the probe must either measure or explain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(4, 2, 2)
        self.emb = nn.Embedding(10, 4)
        self.pos_embed = nn.Parameter(torch.randn(1, 3, 4))
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
        self.frozen = nn.Linear(4, 4)
        self.frozen.weight.requires_grad_(False)
        self.unused = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.dw(torch.tanh(self.bn(self.conv(x)))))  # (b, 4, 4, 4)
        u = self.up(h).mean((1, 2, 3))
        t = h.mean((2, 3))[:, None, :] + self.emb(torch.arange(3, device=x.device))[None] + self.pos_embed
        a, _ = self.mha(t, t, t)
        z = self.frozen(a.mean(1)) + u[:, None]
        return self.head(self.drop(z))


def _zoo_data(n: int = 16) -> TensorDataset:
    gen = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, 1, 4, 4, generator=gen, dtype=F64), torch.randint(0, 3, (n,), generator=gen))


def test_unsupported_layers_are_reported_with_reasons():
    torch.manual_seed(0)
    model = Zoo().double()
    model.train()
    running = model.bn.running_mean.clone()
    data = _zoo_data()
    s = settings(batch_size=16, micro_batch_size=6)
    result = run_probe(model, CE, data, s, "cpu")
    reasons = {u.name: (u.reason, u.partial) for u in result.unsupported}
    expect = {
        "bn": "norm", "emb": "embedding", "pos_embed": "not held as the weight", "up": "transposed",
        "mha": "MultiheadAttention", "mha.out_proj": "never called", "frozen": "frozen",
        "unused": "never called", "dw": "grouped conv",
    }
    for name, needle in expect.items():
        assert name in reasons, f"{name} missing from unsupported"
        assert needle in reasons[name][0], reasons[name]
    assert reasons["dw"][1] and not reasons["bn"][1]
    df = pd.DataFrame(result.curvature_rows)
    assert set(df.layer) == {"conv", "dw", "head"}
    dw = df[df.layer == "dw"]
    assert dw.layer_type.eq("depthwise_conv").all() and dw.h.notna().all() and dw.h_kron.isna().all()
    assert dw.shape_n.iloc[0] == 9 and len(dw) <= 9
    # Eval mode during the probe (BN statistics untouched, dropout off), flags restored after.
    assert model.training and model.drop.training and model.bn.training
    assert torch.equal(model.bn.running_mean, running)
    again = pd.DataFrame(run_probe(model, CE, data, s, "cpu").curvature_rows)
    np.testing.assert_array_equal(again.h.to_numpy(), df.h.to_numpy())


class _Scaled(nn.Linear):
    """Multiplies its input before the weight: hooks see x, the weight sees 2x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(2 * x, self.weight, self.bias)


class _InplaceAfter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.odd = _Scaled(6, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        torch.relu_(h)  # in place on a probed layer's output: δ must still be ∂S/∂(fc output)
        return self.head(torch.tanh(self.odd(h)))


def test_inconsistent_hooks_are_flagged_and_inplace_ops_are_safe():
    torch.manual_seed(0)
    model = _InplaceAfter().double()
    result = run_probe(model, CE, make_data("mlp"), settings(), "cpu")
    df = pd.DataFrame(result.curvature_rows)
    fc = df[df.layer == "fc"]
    assert (fc.grad_check < 1e-12).all() and fc.h_kron.notna().all()
    odd = df[df.layer == "odd"]
    assert odd.h.notna().all() and odd.h_kron.isna().all()
    flagged = [u for u in result.unsupported if u.name == "odd"]
    assert flagged and flagged[0].partial and "inconsistent" in flagged[0].reason


def test_selection_patterns_and_limits():
    model, data = make_model("cnn"), make_data("cnn")
    res = run_probe(model, CE, data, settings(max_layers=2), "cpu")
    df = pd.DataFrame(res.curvature_rows)
    assert list(dict.fromkeys(df.layer)) == ["conv_a", "conv_b"]
    assert sorted(set(df.depth)) == [0, 1]
    res = run_probe(model, CE, data, settings(layers=["conv_c", "head"]), "cpu")
    df = pd.DataFrame(res.curvature_rows)
    assert list(dict.fromkeys(df.layer)) == ["conv_c", "head"] and sorted(set(df.depth)) == [2, 3]
    with pytest.raises(ValueError, match="no probeable layer"):
        run_probe(model, CE, data, settings(layers=["nope*"]), "cpu")
    res = run_probe(model, CE, data, settings(max_factor_dim=20), "cpu")
    partial = {u.name for u in res.unsupported if u.partial}
    assert partial == {"conv_b"}  # n = 3·9 = 27 exceeds 20; conv_a (18) and conv_c (12) do not
    df = pd.DataFrame(res.curvature_rows)
    assert df[df.layer == "conv_b"].h_kron.isna().all() and df[df.layer == "conv_a"].h_kron.notna().all()


def test_profile_rows():
    model, data = make_model("mlp"), make_data("mlp")
    res = run_probe(model, CE, data, settings(), "cpu")
    prof = pd.DataFrame(res.profile_rows)
    phases = prof[prof.layer == "fc1"].set_index("phase")
    assert list(phases.index) == ["grad_svd", "hvp", "factor_accumulation", "eigh", "total"]
    assert math.isclose(phases.seconds["total"], phases.seconds.drop("total").sum())
    assert phases.method["hvp"] in {"fwd_rev", "batched", "loop", "fwd_rev->loop", "batched->loop"}
    assert (prof.seconds >= 0).all() and set(prof[prof.layer == "*"].phase) >= {"grad_pass", "hvp_graph", "total"}
    assert (prof.memory_kind == "cpu_peak_rss_growth").all() and (prof.ranks == 1).all()
    assert (prof.op == "curvature_probe").all() and (prof.device == "cpu").all()
    assert phases.compute_dtype["eigh"] == "fp64" and phases["shape"]["hvp"] == "7x5"


def test_settings_and_probe_batch():
    with pytest.raises(pydantic.ValidationError):
        ProbeSettings(batchsize=3)
    with pytest.raises(pydantic.ValidationError):
        ProbeSettings(batch_size=8, micro_batch_size=16)
    s = ProbeSettings()
    assert (s.batch_size, s.micro_batch_size, s.top_k, s.dtype, s.spatial_subsample) == (2048, 256, 20, "float32", 1)
    data = make_data("mlp", n=30)
    a, b = ProbeBatch.from_dataset(data, 20, seed=5), ProbeBatch.from_dataset(data, 20, seed=5)
    assert a.indices == b.indices and len(set(a.indices)) == 20
    assert ProbeBatch.from_dataset(data, 20, seed=6).indices != a.indices
    assert ProbeBatch.from_dataset(data, 100).size == 30
    shards = [a.shard(r, 3) for r in range(3)]
    assert sum(shards, ()) == a.indices
    sizes = [x.shape[0] for x, _ in a.micro_batches(3, rank=1, world=3)]
    assert sizes == [3, 3, 1]
