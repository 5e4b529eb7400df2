"""Layer tagging, matrix views and the fused-QKV split (optimizers.layer_types)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optimizers.layer_types import (
    LAYER_TYPES,
    from_matrix_view,
    matrix_shape,
    matrix_view,
    owner_modules,
    qkv_split,
    tag_modules,
    tag_parameters,
)

WEIGHTLESS_TYPES = {"bias", "norm"}


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32)


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=256
    )
    return transformers.LlamaForCausalLM(cfg)


class SmallCNN(nn.Module):
    """Conv2d + Linear classifier with generic names: the final Linear must be the head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
            nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier_hidden = nn.Linear(16, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.classifier_hidden(self.features(x))))


class TinyBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d)
        self.attn.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, 4 * d)
        self.mlp.fc2 = nn.Linear(4 * d, d)


class TinyTransformer(nn.Module):
    """timm-style names: blocks.N.attn.qkv/proj, blocks.N.mlp.fc1/fc2, a learned pos_embed."""

    def __init__(self, d: int = 16, vocab: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, 8, d))
        self.blocks = nn.ModuleList([TinyBlock(d), TinyBlock(d)])
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)


def _check_vocabulary(model: nn.Module) -> dict[str, str]:
    tags = tag_parameters(model)
    assert set(tags) == {n for n, _ in model.named_parameters()}
    assert set(tags.values()) <= set(LAYER_TYPES)
    params = dict(model.named_parameters())
    others = [n for n, t in tags.items() if t == "other" and params[n].ndim >= 2]
    assert not others, f"weights tagged 'other': {others}"
    return tags


def test_vocabulary_is_the_documented_one() -> None:
    assert LAYER_TYPES == (
        "conv", "conv_stem", "depthwise_conv", "linear", "attn_q", "attn_k", "attn_v", "attn_qkv",
        "attn_out", "mlp_up", "mlp_gate", "mlp_down", "embedding", "head", "norm", "bias", "other",
    )


def test_resnet18(resnet18: nn.Module) -> None:
    tags = _check_vocabulary(resnet18)
    assert tags["conv1.weight"] == "conv_stem"
    assert tags["layer1.0.conv1.weight"] == "conv"
    assert tags["layer2.0.downsample.0.weight"] == "conv"
    assert tags["bn1.weight"] == "norm" and tags["bn1.bias"] == "bias"
    assert tags["fc.weight"] == "head" and tags["fc.bias"] == "bias"
    assert list(tags.values()).count("conv_stem") == 1
    assert list(tags.values()).count("head") == 1


def test_vit_tiny(vit: nn.Module) -> None:
    tags = _check_vocabulary(vit)
    assert tags["patch_embed.proj.weight"] == "conv_stem"
    assert tags["cls_token"] == "embedding" and tags["pos_embed"] == "embedding"
    assert tags["blocks.0.attn.qkv.weight"] == "attn_qkv"
    assert tags["blocks.0.attn.proj.weight"] == "attn_out"
    assert tags["blocks.0.mlp.fc1.weight"] == "mlp_up"
    assert tags["blocks.0.mlp.fc2.weight"] == "mlp_down"
    assert tags["blocks.0.norm1.weight"] == "norm"
    assert tags["head.weight"] == "head" and tags["head.bias"] == "bias"


def test_gpt2(gpt2: nn.Module) -> None:
    tags = _check_vocabulary(gpt2)
    assert tags["transformer.wte.weight"] == "embedding"  # lm_head.weight is tied to it
    assert tags["transformer.wpe.weight"] == "embedding"
    assert tags["transformer.h.0.attn.c_attn.weight"] == "attn_qkv"
    assert tags["transformer.h.0.attn.c_proj.weight"] == "attn_out"
    assert tags["transformer.h.0.mlp.c_fc.weight"] == "mlp_up"
    assert tags["transformer.h.0.mlp.c_proj.weight"] == "mlp_down"
    assert tags["transformer.ln_f.weight"] == "norm"
    assert tag_modules(gpt2)["lm_head"] == "head"


def test_llama(llama: nn.Module) -> None:
    tags = _check_vocabulary(llama)
    prefix = "model.layers.0."
    expected = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_out", "mlp.gate_proj": "mlp_gate", "mlp.up_proj": "mlp_up",
        "mlp.down_proj": "mlp_down", "input_layernorm": "norm",
    }
    for mod, t in expected.items():
        assert tags[f"{prefix}{mod}.weight"] == t, mod
    assert tags["model.embed_tokens.weight"] == "embedding"
    assert tags["lm_head.weight"] == "head"
    assert tags["model.norm.weight"] == "norm"


def test_small_cnn_and_depthwise() -> None:
    model = SmallCNN()
    tags = _check_vocabulary(model)
    assert tags["features.0.weight"] == "conv_stem"
    assert tags["features.2.weight"] == "depthwise_conv"
    assert tags["features.4.weight"] == "conv"
    assert tags["classifier_hidden.weight"] == "linear"
    assert tags["out.weight"] == "head"


def test_small_transformer_timm_names() -> None:
    tags = _check_vocabulary(TinyTransformer())
    assert tags["blocks.1.attn.qkv.weight"] == "attn_qkv"
    assert tags["blocks.1.attn.proj.weight"] == "attn_out"
    assert tags["blocks.1.mlp.fc1.weight"] == "mlp_up"
    assert tags["blocks.1.mlp.fc2.weight"] == "mlp_down"
    assert tags["pos_embed"] == "embedding" and tags["tok.weight"] == "embedding"
    assert tags["lm_head.weight"] == "head"


def test_hidden_fc_next_to_head_is_linear() -> None:
    model = nn.Module()
    model.conv = nn.Conv2d(1, 4, 3)
    model.fc = nn.Linear(4, 4)
    model.head = nn.Linear(4, 2)
    tags = tag_parameters(model)
    assert tags["fc.weight"] == "linear" and tags["head.weight"] == "head"


def test_multihead_attention_in_proj() -> None:
    model = nn.Module()
    model.mha = nn.MultiheadAttention(8, 2)
    model.head = nn.Linear(8, 3)
    tags = tag_parameters(model)
    assert tags["mha.in_proj_weight"] == "attn_qkv"
    assert tags["mha.out_proj.weight"] == "attn_out"
    assert tags["mha.in_proj_bias"] == "bias"
    parts = qkv_split(model.mha.in_proj_weight, "attn_qkv", model.mha)
    assert all(v.shape == (8, 8) for v in parts.values())


def test_qkv_split_gpt2_conv1d(gpt2: nn.Module) -> None:
    c_attn = gpt2.transformer.h[0].attn.c_attn
    w = c_attn.weight  # in × out = 64 × 192
    parts = qkv_split(w, "attn_qkv", c_attn)
    assert {k: tuple(v.shape) for k, v in parts.items()} == {"q": (64, 64), "k": (64, 64), "v": (64, 64)}
    assert torch.equal(torch.cat([parts["q"], parts["k"], parts["v"]], dim=1), w)
    # A whole model finds the owning Conv1D by identity.
    again = qkv_split(w, "attn_qkv", gpt2)
    assert all(torch.equal(again[k], parts[k]) for k in "qkv")
    # The bias splits along its only dimension.
    b = qkv_split(c_attn.bias, "attn_qkv", c_attn)
    assert torch.equal(torch.cat(list(b.values())), c_attn.bias)
    # The q view is the one GPT-2's forward uses: x @ W_q.
    x = torch.randn(3, 64)
    q_forward = c_attn(x)[:, :64]
    torch.testing.assert_close(x @ parts["q"] + b["q"], q_forward)


def test_qkv_split_timm_linear(vit: nn.Module) -> None:
    qkv = vit.blocks[0].attn.qkv
    parts = qkv_split(qkv.weight, "attn_qkv", qkv)
    assert all(tuple(v.shape) == (192, 192) for v in parts.values())
    assert torch.equal(torch.cat([parts["q"], parts["k"], parts["v"]], dim=0), qkv.weight)
    assert qkv_split(qkv.weight, "attn_qkv", vit)["k"].data_ptr() == parts["k"].data_ptr()
    with pytest.raises(ValueError, match="attn_qkv"):
        qkv_split(qkv.weight, "attn_out", qkv)
    uneven = qkv_split(qkv.weight, "attn_qkv", qkv, sizes=(192, 96, 288))
    assert uneven["v"].shape == (288, 192)


def test_conv_matrix_view_round_trip(resnet18: nn.Module) -> None:
    w = resnet18.layer1[0].conv1.weight  # 64 × 64 × 3 × 3
    mat = matrix_view(w, "conv", resnet18.layer1[0].conv1)
    assert mat.shape == (64, 64 * 9)
    assert torch.equal(mat[5], w[5].flatten())  # row = one output channel's (in, kh, kw) kernel
    assert torch.equal(from_matrix_view(mat, w.shape), w)


def test_conv1d_matrix_view_is_out_by_in(gpt2: nn.Module) -> None:
    owners = owner_modules(gpt2)
    name = "transformer.h.0.mlp.c_fc.weight"
    w = dict(gpt2.named_parameters())[name]  # 64 × 256 stored in × out
    mat = matrix_view(w, "mlp_up", owners[name])
    assert mat.shape == (256, 64)
    x = torch.randn(2, 64)
    torch.testing.assert_close(x @ mat.T + owners[name].bias, owners[name](x))
    assert torch.equal(from_matrix_view(mat, w.shape, owners[name]), w)


def test_matrix_view_rejects_vectors() -> None:
    with pytest.raises(ValueError, match="no matrix view"):
        matrix_view(torch.zeros(4), "bias")
    with pytest.raises(ValueError, match="unknown layer type"):
        matrix_view(torch.zeros(4, 4), "dense")


def test_matrix_shape_is_the_shape_of_the_out_by_rest_view(resnet18: nn.Module) -> None:
    conv = resnet18.layer1[0].conv1
    assert matrix_shape(conv.weight.shape) == tuple(matrix_view(conv.weight, "conv", conv).shape) == (64, 576)
    assert matrix_shape((768, 3072)) == (768, 3072)
    assert matrix_shape((10,)) == (10, 1) and matrix_shape(()) == (1, 1)
