"""The model registry resolves specs, rejects bad ones with messages that name the problem,
and checks builder args before anything is built."""

from __future__ import annotations

import pytest

from bench import models
from bench.data import TaskInfo


@pytest.mark.parametrize(
    "spec",
    [
        "builtin:cnn",
        "builtin:transformer",
        "timm:resnet18",
        "hf:gpt2",
        "hf:gpt2-medium",
        "hf:llama",
        "hf:qwen2",
    ],
)
def test_known_specs_pass(spec: str) -> None:
    assert models.check_spec(spec) is None


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("foo:bar", "unknown scheme 'foo'"),
        ("resnet18", "missing scheme"),
        ("builtin:mlp", "unknown builtin model 'mlp'"),
        ("timm:resnet19", "unknown timm model 'resnet19'"),
        ("hf:gpt3", "unknown hf model 'gpt3'"),
        ("hf:meta-llama/Llama-2-7b-hf", "without downloading"),
        ("hf:./nowhere/config.json", "model config not found"),
    ],
)
def test_bad_specs_are_named(spec: str, needle: str) -> None:
    message = models.check_spec(spec)
    assert message is not None and needle in message and repr(spec) in message


def test_unknown_timm_name_suggests_close_ones() -> None:
    assert "resnet18" in models.check_spec("timm:resnet19")


def test_local_config_must_be_a_causal_lm(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "vit"}')
    assert "no causal-LM class" in models.check_spec(f"hf:{path}")
    path.write_text('{"model_type": "gpt2", "n_layer": 1}')
    assert models.check_spec(f"hf:{path}") is None and models.check_spec(f"hf:{tmp_path}") is None


def test_check_args_unknown_names() -> None:
    (problem,) = models.check_args("builtin:transformer", {"n_layers": 3})
    assert "unknown arg 'n_layers'" in problem and "did you mean 'n_layer'" in problem
    assert "did you mean 'n_layer'" in models.check_args("hf:gpt2", {"n_layr": 2})[0]
    assert models.check_args("hf:llama", {"size": "tiny", "num_hidden_layers": 1}) == []


def test_check_args_bad_values() -> None:
    assert "must divide" in models.check_args("builtin:transformer", {"d_model": 30, "n_head": 4})[0]
    assert "channels" in models.check_args("builtin:cnn", {"channels": [8, 8]})[0]
    assert "size 'huge' unknown" in models.check_args("hf:gpt2", {"size": "huge"})[0]
    assert "size" in models.check_args("hf:qwen2", {"size": "tiny"})[0]  # no sizes for that family


def test_timm_args_pass_through_and_are_checked_on_meta() -> None:
    assert models.check_args("timm:resnet18", {"drop_rate": 0.1}) == []
    assert "unexpected keyword" in models.check_args("timm:resnet18", {"wings": 2})[0]
    assert "comes from the dataset" in models.check_args("timm:resnet18", {"num_classes": 5})[0]


def test_build_model_rejects_the_wrong_task_kind() -> None:
    lm = TaskInfo(kind="lm", vocab_size=257, seq_len=8)
    images = TaskInfo(kind="classification", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="needs a classification task"):
        models.build_model("builtin:cnn", lm, {})
    with pytest.raises(ValueError, match="needs an lm task"):
        models.build_model("hf:gpt2", images, {"size": "tiny"})
    with pytest.raises(ValueError, match="unknown scheme"):
        models.build_model("foo:bar", images, {})
