"""Shape sets of real models: published Llama configs, and derived sets equal to their frozen copy."""

from __future__ import annotations

import pytest

from bench.profile import shapes as S


def _by_role(name: str) -> dict[str, S.MatrixShape]:
    return {s.name.split(".")[-2]: s for s in S.get(name).shapes}


def test_llama_70b_has_grouped_query_attention():
    s = _by_role("llama-70b")
    assert (s["q_proj"].m, s["q_proj"].n) == (8192, 8192)
    assert (s["k_proj"].m, s["k_proj"].n) == (s["v_proj"].m, s["v_proj"].n) == (1024, 8192)  # 8 kv heads × 128
    assert (s["gate_proj"].m, s["gate_proj"].n) == (s["up_proj"].m, s["up_proj"].n) == (28672, 8192)
    assert (s["down_proj"].m, s["down_proj"].n) == (8192, 28672)
    assert all(x.count == 80 for x in s.values())
    assert S.get("llama-70b").num_matrices == 7 * 80


def test_llama_7b_and_405b():
    s7 = _by_role("llama-7b")
    assert (s7["k_proj"].m, s7["k_proj"].n) == (4096, 4096) and s7["down_proj"].n == 11008
    assert S.get("llama-7b").num_elements == 32 * (4 * 4096**2 + 3 * 4096 * 11008)  # 6.5 B in projections
    s405 = _by_role("llama-405b")
    assert (s405["k_proj"].m, s405["k_proj"].n) == (1024, 16384)
    assert (s405["up_proj"].m, s405["up_proj"].n) == (53248, 16384) and s405["up_proj"].count == 126


def test_frozen_sets_have_the_expected_shapes():
    gpt2 = {(s.layer_type, s.m, s.n): s.count for s in S.get("gpt2-small", "frozen").shapes}
    assert gpt2 == {("attn_qkv", 2304, 768): 12, ("attn_out", 768, 768): 12, ("mlp_up", 3072, 768): 12,
                    ("mlp_down", 768, 3072): 12}
    r18 = S.get("resnet18", "frozen")
    assert r18.num_matrices == 20  # 17 3×3/7×7 convs + 3 downsample 1×1 convs; fc is the head (AdamW)
    assert ("conv1.weight", "conv_stem", 64, 147) in {(s.name, s.layer_type, s.m, s.n) for s in r18.shapes}
    assert {s.key for s in S.get("gpt2-small", "frozen").unique()} == {(2304, 768), (768, 768), (3072, 768)}


def test_frozen_copy_equals_a_fresh_derivation():
    """The fallback table must be what instantiating the models on the meta device gives."""
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    for name in [*S.TIMM_MODELS, *S.GPT2_MODELS]:
        derived = S.derive(name)
        assert derived.shapes == S.frozen(name).shapes, name
        assert derived.source in ("timm", "transformers")


def test_unknown_set():
    with pytest.raises(KeyError, match="unknown shape set"):
        S.get("resnet1000")


def test_block_models_are_the_catalogue_blocks():
    """The optimizer-step and spectral-step measurements build GPT-2 blocks with build_model: their
    matrices are the catalogue's, one per role and block."""
    pytest.importorskip("transformers")
    from collections import Counter

    blocks = S.shapes_of_model(S.build_model("gpt2-small", "meta", blocks=2), "two-blocks", "transformers")
    full = S.get("gpt2-small", "frozen")
    counts: Counter = Counter()
    for s in blocks.shapes:
        counts[(s.layer_type, s.m, s.n)] += s.count
    assert counts == {(s.layer_type, s.m, s.n): 2 for s in full.shapes}
    narrow = S.shapes_of_model(S.build_model("gpt2-small", "meta", blocks=1, dim=48), "narrow", "transformers")
    assert {(s.m, s.n) for s in narrow.shapes} == {(144, 48), (48, 48), (192, 48), (48, 192)}
    with pytest.raises(KeyError, match="cannot be instantiated"):
        S.build_model("llama-7b")
