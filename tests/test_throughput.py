"""Model FLOPs, peak and MFU (bench.throughput) against closed forms written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data.task import TaskInfo
from bench.models import build_model
from bench.throughput import Peak, count_train_flops, device_peak, throughput_columns


def test_counted_flops_of_an_mlp_match_the_closed_form():
    """in→h→out MLP on one sample: forward 2·in·h + 2·h·out; backward needs dW2 (2·h·out), the
    gradient into the hidden layer (2·h·out) and dW1 (2·in·h), but no gradient of the input."""
    d_in, hidden, d_out = 24, 40, 7
    model = nn.Sequential(nn.Linear(d_in, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, d_out, bias=False))
    x, y = torch.randn(1, d_in), torch.tensor([3])
    flops = count_train_flops(model, x, lambda out: F.cross_entropy(out, y))
    assert flops == 4 * d_in * hidden + 6 * hidden * d_out
    assert all(p.grad is None for p in model.parameters())  # the count leaves no gradients


def test_counted_flops_of_gpt2_agree_with_the_palm_estimate():
    """PaLM's per-token estimate 6·N + 12·L·d·T (N: matrix parameters incl. the head, no
    lookups) is an approximation (it ignores softmax, norms and the first layer's missing input
    gradient); the count must agree to a few percent on a real GPT-2 shape."""
    seq, layers, d = 64, 2, 128
    task = TaskInfo(kind="lm", vocab_size=257, seq_len=seq, eos_token_id=256)
    model = build_model("hf:gpt2", task, {"n_layer": layers, "n_embd": d, "n_head": 4})
    x = torch.randint(0, 257, (1, seq))
    counted = count_train_flops(model, x, lambda out: F.cross_entropy(out.reshape(-1, 257), x.reshape(-1)))
    matrices = layers * 12 * d * d + 257 * d  # qkv 3d², out d², MLP 8d² per block; the head
    estimate = seq * (6 * matrices + 12 * layers * d * seq)
    assert counted == pytest.approx(estimate, rel=0.05)


def test_throughput_columns():
    peak = Peak(2e9, "config")
    cols = throughput_columns(0.5, samples_per_step=32, tokens_per_sample=64, flops_per_sample=1e7,
                              world_size=2, peak=peak)
    assert cols["samples_per_s"] == 64
    assert cols["tokens_per_s"] == 64 * 64
    assert cols["model_flops_per_s"] == 1e7 * 32 / 0.5 / 2
    assert cols["mfu"] == pytest.approx(cols["model_flops_per_s"] / 2e9)
    assert math.isnan(throughput_columns(0.5, 32, 0, 1e7, 1, None)["tokens_per_s"])
    assert math.isnan(throughput_columns(0.5, 32, 0, 1e7, 1, None)["mfu"])


def test_peak_order_config_then_measured_on_cpu():
    assert device_peak(torch.device("cpu"), "fp32", 2.5) == Peak(2.5e12, "config")
    measured = device_peak(torch.device("cpu"), "fp32")
    assert measured.source == "measured-matmul" and 1e8 < measured.flops_per_s < 1e13
