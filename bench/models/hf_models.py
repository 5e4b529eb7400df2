"""``hf:<name-or-config>`` — causal language models from transformers configs, random init.

Nothing is downloaded: a model is built from a config object, never from a checkpoint.

- ``hf:gpt2`` (GPT2Config defaults, 124M), ``hf:gpt2-medium`` / ``-large`` / ``-xl`` (the published
  shapes), ``hf:llama`` (LlamaConfig defaults overridden by args — those defaults are Llama-2-7B,
  so pick a ``size`` or set the shape), and any other transformers ``model_type`` that has a
  causal-LM class (``hf:qwen2``, ``hf:mistral``, ...).
- ``hf:path/to/config.json`` or ``hf:path/to/dir`` (holding ``config.json``): read with
  ``AutoConfig.from_pretrained(..., local_files_only=True)``.

The config is assembled in layers, later ones winning:
family defaults → named preset → ``LM_SIZES[family][size]`` → the task (``vocab_size``, maximum
positions, bos/eos ids inside the vocabulary) → dropout 0 → the remaining args.
Dropout defaults to 0 (GPT-2's config says 0.1) so that runs are deterministic and data-parallel
equals single-process; pass e.g. ``resid_pdrop: 0.1`` to restore it.

The model uses eager attention (plain matmul-softmax-matmul), which supports the double backward
of curvature probes, and is wrapped so that ``forward(input_ids)`` returns the B×T×V logits
tensor like every other model in the suite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.data.task import TaskInfo
from bench.problems import shown

#: Named checkpoint shapes → (model_type, config overrides). Only the shapes are used.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("gpt2", {}),
    "gpt2-medium": ("gpt2", {"n_layer": 24, "n_embd": 1024, "n_head": 16}),
    "gpt2-large": ("gpt2", {"n_layer": 36, "n_embd": 1280, "n_head": 20}),
    "gpt2-xl": ("gpt2", {"n_layer": 48, "n_embd": 1600, "n_head": 25}),
    "llama": ("llama", {}),
}

#: Model sizes for scaling studies, by family, selected with ``args: {size: ...}``. The names are
#: the nominal parameter counts with a GPT-2/Llama-sized vocabulary; with the byte vocabulary
#: (257 ids) the embeddings shrink and the totals are smaller.
LM_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "gpt2": {
        "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4},
        "10m": {"n_layer": 6, "n_embd": 384, "n_head": 6},
        "124m": {"n_layer": 12, "n_embd": 768, "n_head": 12},
        "350m": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
        "1.3b": {"n_layer": 24, "n_embd": 2048, "n_head": 16},
    },
    "llama": {
        "tiny": {
            "hidden_size": 64,
            "intermediate_size": 176,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        },
        "10m": {
            "hidden_size": 384,
            "intermediate_size": 1024,
            "num_hidden_layers": 6,
            "num_attention_heads": 6,
            "num_key_value_heads": 6,
        },
        "124m": {
            "hidden_size": 768,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "num_key_value_heads": 12,
        },
        "350m": {
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
        },
        "1.3b": {
            "hidden_size": 2048,
            "intermediate_size": 5504,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
        },
    },
}

#: Config fields that hold the longest sequence a model accepts (differently named per family).
POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")

#: Config keys that are bookkeeping, not architecture; not accepted as args.
_NOT_ARGS = {
    "_name_or_path",
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "id2label",
    "label2id",
    "problem_type",
}


def _causal_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _local_config_file(name: str) -> Path | None:
    """The config.json a local spec points at, or None if it is not a local path."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path / "config.json"
    return None


def _model_type(name: str) -> str | None:
    """The transformers model_type of ``hf:<name>``, or None if it cannot be resolved offline."""
    if name in PRESETS:
        return PRESETS[name][0]
    if name in _causal_types():
        return name
    file = _local_config_file(name)
    if file is not None:
        try:
            return json.loads(file.read_text()).get("model_type")
        except (OSError, ValueError):
            return None
    return None


def check_name(name: str) -> str | None:
    """Problem with the part after ``hf:``, or None. Cheap: reads at most a local config.json."""
    if not name:
        return "empty model name after 'hf:'"
    file = _local_config_file(name)
    if file is not None:
        try:
            model_type = json.loads(file.read_text()).get("model_type")
        except (OSError, ValueError) as e:
            return f"cannot read model config {file}: {e}"
        if model_type not in _causal_types():
            return (
                f"config {file} has model_type {model_type!r}, which has no causal-LM class in transformers"
            )
        return None
    if _model_type(name) is None:
        looks_local = name.startswith(("/", "./", "../", "~")) or name.endswith(".json")
        if looks_local:
            return f"model config not found: {name} (give a config.json or a directory holding one)"
        return (
            f"unknown hf model {name!r}: models are built from configs without downloading, so use "
            f"a known name ({', '.join(PRESETS)}), a transformers model_type with a causal LM "
            "(e.g. qwen2, mistral), or a local config.json path"
        )
    return None


def _base(name: str) -> tuple[type, dict[str, Any], dict[str, Any]]:
    """(config class, base kwargs, default fields) of ``hf:<name>``.

    Base kwargs are the preset for a named family, or the whole local config.json; default
    fields are the class's fields with their values, which decide which task and dropout fields
    exist. Configs are always constructed from kwargs (never mutated afterwards) so that fields
    derived in ``__init__`` (such as Llama's ``head_dim``) follow the final shape.
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    file = _local_config_file(name)
    if file is not None:
        config = AutoConfig.from_pretrained(str(file), local_files_only=True)
        base = {k: v for k, v in config.to_dict().items() if k not in _NOT_ARGS}
        return type(config), base, config.to_dict()
    model_type = _model_type(name)
    cls = CONFIG_MAPPING[model_type]
    preset = dict(PRESETS[name][1]) if name in PRESETS else {}
    return cls, preset, cls(**preset).to_dict()


def allowed_args(name: str) -> dict[str, str]:
    """``size`` (for families in `LM_SIZES`) plus every field of the model's config."""
    cls, _, fields = _base(name)
    allowed = {k: f"{cls.__name__}.{k}" for k in fields if k not in _NOT_ARGS}
    if fields.get("model_type") in LM_SIZES:
        allowed["size"] = f"named size: {', '.join(LM_SIZES[fields['model_type']])}"
    return allowed


def _type_problem(key: str, value: Any, default: Any) -> str | None:
    """A value whose type cannot stand for the config field's default: a quoted number for an
    int/float field, a string such as "yes" for a boolean. Fields whose default is None or a
    string accept anything (transformers checks them when the config is built)."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        return None
    return None if ok else f"{key} must be {want} like its default {default!r}, got {shown(value)}"


def validate_args(name: str, args: dict[str, Any]) -> list[str]:
    """Problems with argument values (names are checked by the registry): a ``size`` this family
    does not have, and values whose type does not match the config field's default."""
    problems = []
    if "size" in args:
        model_type = _model_type(name)
        sizes = LM_SIZES.get(model_type or "", {})
        if args["size"] not in sizes:
            problems.append(f"size {shown(args['size'])} unknown for {model_type}; use one of {', '.join(sizes) or '(none)'}")
    if any(key != "size" for key in args):
        _, _, fields = _base(name)
        problems += [p for key, value in args.items() if key in fields
                     and (p := _type_problem(key, value, fields[key])) is not None]
    return problems


def build_config(name: str, task: TaskInfo, args: dict[str, Any]) -> Any:
    """The transformers config of ``hf:<name>`` for ``task`` (see the module docstring for the
    order in which defaults, preset, size, task and args apply)."""
    cls, kwargs, fields = _base(name)
    args = dict(args)
    size = args.pop("size", None)
    if size is not None:
        kwargs.update(LM_SIZES[fields["model_type"]][size])

    vocab = int(task.vocab_size)  # type: ignore[arg-type]
    seq_len = int(task.seq_len)  # type: ignore[arg-type]
    kwargs["vocab_size"] = vocab
    kwargs.update({key: seq_len for key in POSITION_FIELDS if key in fields})
    # Special-token ids must exist in the (possibly much smaller) vocabulary.
    eos = task.eos_token_id if task.eos_token_id is not None else vocab - 1
    for key in ("bos_token_id", "eos_token_id"):
        value = kwargs.get(key, fields.get(key))
        if isinstance(value, int) and value >= vocab:
            kwargs[key] = eos
    pad = kwargs.get("pad_token_id", fields.get("pad_token_id"))
    if isinstance(pad, int) and pad >= vocab:
        kwargs["pad_token_id"] = None
    kwargs.update(
        {k: 0.0 for k, v in fields.items() if ("dropout" in k or "pdrop" in k) and isinstance(v, float)}
    )
    kwargs.update(args)
    config = cls(**kwargs)

    if config.vocab_size < vocab:
        raise ValueError(
            f"model 'hf:{name}': vocab_size {config.vocab_size} < the dataset's {vocab} token ids"
        )
    for key in POSITION_FIELDS:
        if key in fields and getattr(config, key) < seq_len:
            raise ValueError(
                f"model 'hf:{name}': {key} {getattr(config, key)} < the dataset's seq_len {seq_len}"
            )
    return config


class CausalLMLogits(nn.Module):
    """A transformers causal LM whose ``forward(input_ids)`` returns the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # use_cache=False: training never decodes incrementally, and the cache costs memory.
        return self.model(input_ids=input_ids, use_cache=False).logits


def build(name: str, task: TaskInfo, args: dict[str, Any]) -> nn.Module:
    """Build ``hf:<name>`` for a language-modelling ``task``, randomly initialised."""
    from transformers import AutoModelForCausalLM

    if task.kind != "lm":
        raise ValueError(
            f"model 'hf:{name}' is a causal LM and needs an lm task, the dataset is {task.kind!r}"
        )
    config = build_config(name, task, args)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return CausalLMLogits(model)
