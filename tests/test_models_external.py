"""timm and transformers models built offline from the task: forward shapes, logits as a plain
tensor, task-derived sizes, named sizes and local config files."""

from __future__ import annotations

import torch

from bench.data import TaskInfo
from bench.models import build_model
from bench.models.hf_models import LM_SIZES, build_config

DIGITS = TaskInfo(kind="classification", num_classes=10, input_shape=(1, 8, 8))
BYTES = TaskInfo(kind="lm", vocab_size=257, seq_len=16, eos_token_id=256)


def test_timm_resnet18_on_8x8_grey_images() -> None:
    model = build_model("timm:resnet18", DIGITS, {})
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert model.conv1.in_channels == 1


def test_hf_gpt2_tiny_returns_logits_tensor() -> None:
    model = build_model("hf:gpt2", BYTES, {"n_layer": 2, "n_embd": 32, "n_head": 2})
    out = model(torch.randint(0, 257, (3, 16)))
    assert type(out) is torch.Tensor and out.shape == (3, 16, 257)
    cfg = model.config
    assert (cfg.vocab_size, cfg.n_positions, cfg.n_layer, cfg.n_embd) == (257, 16, 2, 32)
    assert cfg.eos_token_id == cfg.bos_token_id == 256  # moved inside the byte vocabulary
    assert cfg.resid_pdrop == cfg.attn_pdrop == cfg.embd_pdrop == 0.0
    assert cfg._attn_implementation == "eager"


def test_hf_llama_tiny_size() -> None:
    model = build_model("hf:llama", BYTES, {"size": "tiny"})
    assert model(torch.randint(0, 257, (2, 16))).shape == (2, 16, 257)
    cfg = model.config
    assert cfg.hidden_size == 64 and cfg.head_dim == 16 and cfg.max_position_embeddings == 16
    assert cfg._attn_implementation == "eager"


def test_args_override_size_and_task() -> None:
    cfg = build_config("hf:gpt2".split(":")[1], BYTES, {"size": "tiny", "n_layer": 1, "vocab_size": 320})
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size) == (1, 64, 320)
    cfg = build_config("gpt2-medium", BYTES, {})
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == (24, 1024, 16)


def test_lm_sizes_are_consistent() -> None:
    for family, sizes in LM_SIZES.items():
        assert list(sizes) == ["tiny", "10m", "124m", "350m", "1.3b"]
        for size in sizes:
            cfg = build_config(family, BYTES, {"size": size})
            heads = cfg.n_head if family == "gpt2" else cfg.num_attention_heads
            width = cfg.n_embd if family == "gpt2" else cfg.hidden_size
            assert width % heads == 0


def test_local_config_file_and_directory(tmp_path) -> None:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50257).save_pretrained(str(tmp_path))
    for spec in (f"hf:{tmp_path / 'config.json'}", f"hf:{tmp_path}"):
        model = build_model(spec, BYTES, {"n_embd": 32})
        assert model(torch.randint(0, 257, (1, 16))).shape == (1, 16, 257)
        assert (model.config.n_layer, model.config.n_embd, model.config.vocab_size) == (1, 32, 257)


def test_hf_double_backward() -> None:
    torch.manual_seed(0)
    model = build_model("hf:gpt2", BYTES, {"size": "tiny", "n_layer": 1})
    x = torch.randint(0, 257, (2, 16))
    w = model.model.transformer.h[0].attn.c_attn.weight
    loss = model(x).logsumexp(-1).mean()
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.randn_like(w)).sum(), w)
    assert torch.isfinite(hv).all() and hv.abs().sum() > 0
