"""builtin:cnn and builtin:transformer: shapes, names, causality, double backward, and the CNN
learning the digits."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from bench.data import TaskInfo, load_dataset
from bench.models import build_model

DIGITS = TaskInfo(kind="classification", num_classes=10, input_shape=(1, 8, 8))
BYTES = TaskInfo(kind="lm", vocab_size=257, seq_len=16, eos_token_id=256)


def test_cnn_shapes_and_size() -> None:
    model = build_model("builtin:cnn", DIGITS, {})
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert 20_000 <= sum(p.numel() for p in model.parameters()) <= 40_000
    rgb = build_model(
        "builtin:cnn", TaskInfo(kind="classification", num_classes=100, input_shape=(3, 32, 32)), {}
    )
    assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    small = build_model("builtin:cnn", DIGITS, {"channels": [4, 8, 8], "hidden": 16})
    assert small.fc.in_features == 8 and small.head.in_features == 16


def test_cnn_has_no_batchnorm_or_dropout() -> None:
    model = build_model("builtin:cnn", DIGITS, {})
    kinds = {type(m).__name__ for m in model.modules()}
    assert not kinds & {"BatchNorm2d", "Dropout", "Dropout2d"}


def test_transformer_shapes_and_layer_names() -> None:
    model = build_model("builtin:transformer", BYTES, {"d_model": 32, "n_layer": 3, "n_head": 4})
    assert model(torch.randint(0, 257, (2, 16))).shape == (2, 16, 257)
    assert model(torch.randint(0, 257, (2, 5))).shape == (2, 5, 257)  # shorter inputs are fine
    names = {n for n, _ in model.named_parameters()}
    for expected in (
        "tok_emb.weight",
        "pos_emb.weight",
        "blocks.2.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.weight",
        "ln_f.weight",
        "head.weight",
    ):
        assert expected in names
    assert model.blocks[0].mlp.fc1.out_features == 128  # d_ff defaults to 4 × d_model
    assert model.head.weight.data_ptr() != model.tok_emb.weight.data_ptr()  # untied


def test_transformer_is_causal() -> None:
    torch.manual_seed(0)
    model = build_model("builtin:transformer", BYTES, {})
    idx = torch.randint(0, 257, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 257
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_transformer_supports_double_backward() -> None:
    torch.manual_seed(0)
    model = build_model("builtin:transformer", BYTES, {"d_model": 16, "n_layer": 1, "n_head": 2})
    x, y = torch.randint(0, 257, (2, 16)), torch.randint(0, 257, (2, 16))
    w = model.blocks[0].attn.qkv.weight
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    v = torch.randn_like(w)
    (hv,) = torch.autograd.grad((g * v).sum(), w)  # a Hessian-vector product
    assert hv.shape == w.shape and torch.isfinite(hv).all() and hv.abs().sum() > 0


def test_cnn_learns_digits() -> None:
    # One thread: the model is too small to gain from more, and on a busy CI machine extra
    # threads only contend (measured 1.5 s with one thread vs 7-20 s with two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accuracy = _train_cnn_on_digits()
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.9, accuracy


def _train_cnn_on_digits() -> float:
    """Test accuracy after 150 AdamW steps (batch 64, lr 3e-3)."""
    torch.manual_seed(0)
    bundle = load_dataset("sklearn:digits", {}, seed=0)
    model = build_model("builtin:cnn", bundle.task, {})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x_train, y_train = bundle.train.tensors
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = torch.randint(0, len(y_train), (64,), generator=gen)
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x_test, y_test = bundle.test.tensors
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item()
