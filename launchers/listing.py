"""What exists, generated from the code so it cannot drift: ``specbench config --show`` (every
config section, key, default and meaning) and ``specbench list models|datasets|optimizers``
(what the registries hold, with sizes and settings, and the plug-ins this environment's
distributions declare as entry points, with where each comes from: docs/plugins.md).

Everything here is cheap: registry tables, typed models, and parameter counts of the built-in
models (real, tiny) and of the named Hugging Face sizes (built on PyTorch's ``meta`` device,
which allocates no memory). Nothing is downloaded.
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import Any

from pydantic import BaseModel

# ------------------------------------------------------------------------------ config --show


def _nested(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The config model inside a field's type, and how its path continues: ``[]`` for a list of
    them, ``.<key>`` for a mapping to them, nothing for the model itself or an optional one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    for arg in args:
        found = _nested(arg)
        if found is not None:
            model, suffix = found
            if origin is list:
                return model, "[]" + suffix
            if origin is dict:
                return model, ".<key>" + suffix
            return model, suffix
    return None


def _shown_default(field: Any) -> str:
    if field.is_required():
        return "(required)"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return "(section below)"
    return json.dumps(default, default=str)


def describe_config(model: type[BaseModel]) -> list[str]:
    """Every key of ``model`` with its default and description, then every nested section,
    breadth first (a section model met twice is printed once and referred to after)."""
    lines: list[str] = []
    queue: list[tuple[type[BaseModel], str]] = [(model, "")]
    seen: dict[type, str] = {model: "(top level)"}
    while queue:
        current, title = queue.pop(0)
        lines.append(f"{title or '(top level)'}:")
        for name, field in current.model_fields.items():
            lines.append(f"  {name}: {_shown_default(field)}    # {field.description or ''}")
            found = _nested(field.annotation)
            if found is None:
                continue
            sub, suffix = found
            path = f"{title}.{name}{suffix}" if title else f"{name}{suffix}"
            if sub in seen:
                lines.append(f"    ({path}: the same keys as {seen[sub]})")
            else:
                seen[sub] = path
                queue.append((sub, path))
        lines.append("")
    return lines


def describe_defaults() -> str:
    """The whole config reference: every section of a sweep file, then every optimizer's
    settings (``optimizers[].settings`` for each ``name``), installed plug-ins included."""
    import optimizers
    from bench.config import SweepConfig

    lines = describe_config(SweepConfig)
    for name in optimizers.available() + [n for n, _ in optimizers.installed_plugins() if not optimizers.check_name(n)]:
        lines += [f"optimizers[].settings for name: {name}", *_settings_lines(name), ""]
    return "\n".join(lines)


def _shown(default: Any) -> str:
    return "(required)" if default is ... else json.dumps(default, default=str)


def _settings_lines(name: str, indent: str = "  ") -> list[str]:
    import optimizers

    return [f"{indent}{field}: {_shown(default)}    # {desc}" for field, default, desc in optimizers.describe(name)]


# -------------------------------------------------------------------------------------- list
def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _params(spec: str, task: Any, args: dict[str, Any], meta: bool = False) -> int:
    import torch

    from bench.models import build_model

    if meta:
        with torch.device("meta"):
            model = build_model(spec, task, args)
    else:
        model = build_model(spec, task, args)
    return sum(p.numel() for p in model.parameters())


def _args_lines(args: dict[str, str], indent: str = "    ") -> list[str]:
    return [f"{indent}{k}: {v}" for k, v in sorted(args.items())]


def _plugin_header(group: str, form: str, empty: bool) -> str:
    where = f"entry points of {group}; {form} works without one, see docs/plugins.md"
    return f"plug-ins: none installed ({where})" if empty else f"plug-ins ({where}):"


def _spec_plugins(kind: str) -> list[str]:
    """The installed model or dataset plug-ins, each with its origin and args (or why it does
    not load)."""
    from bench.data.registry import RESOLVER as DATASETS
    from bench.models.registry import RESOLVER as MODELS
    from bench.plugins import PluginFactory
    from optimizers.plugins import GROUPS

    found = (MODELS if kind == "model" else DATASETS).installed()
    lines = ["", _plugin_header(GROUPS[kind], "module.path:function", not found)]
    for name, origin, plugin in found:
        if isinstance(plugin, PluginFactory):
            doc = (inspect.getdoc(plugin.factory) or "").splitlines()
            lines += [f"  {name}  {doc[0] if doc else ''}", f"    from: {origin}", "    args:"]
            lines += _args_lines(plugin.allowed_args(), "      ")
        else:
            lines += [f"  {name}  cannot be used: {plugin}", f"    from: {origin}"]
    return lines


def list_models() -> str:
    """Built-in models with their parameter counts, the named Hugging Face families and sizes
    (parameters with the family's own vocabulary), and the timm pattern."""
    import timm

    from bench.data.task import TaskInfo
    from bench.models import builtin, hf_models

    digits = TaskInfo(kind="classification", num_classes=10, input_shape=(1, 8, 8))
    text = TaskInfo(kind="lm", vocab_size=257, seq_len=64)
    lines = ["builtin (this repository; no third-party model code):"]
    for name, task, where in (("cnn", digits, "sklearn:digits"), ("transformer", text, "builtin:text")):
        lines.append(f"  builtin:{name}  {_millions(_params(f'builtin:{name}', task, {}))} parameters on {where}; args:")
        lines += _args_lines(builtin.ALLOWED_ARGS[name])
    lines += ["", "hf:<family> (transformers causal LM from a config, random init, no download; "
              "model_args: size, or any config field):"]
    vocab = {"gpt2": 50257, "llama": 32000}
    for family, sizes in hf_models.LM_SIZES.items():
        task = TaskInfo(kind="lm", vocab_size=vocab[family], seq_len=1024)
        counts = ", ".join(f"{size} {_millions(_params(f'hf:{family}', task, {'size': size}, meta=True))}"
                           for size in sizes)
        lines.append(f"  hf:{family}  size: {counts} (vocabulary {vocab[family]}, 1024 positions)")
    presets = ", ".join(f"hf:{p}" for p in hf_models.PRESETS if p not in hf_models.LM_SIZES)
    lines += [f"  also {presets} (published GPT-2 shapes), any transformers model_type with a causal LM "
              "(hf:qwen2, hf:mistral, ...), or hf:path/to/config.json",
              "", f"timm:<name> (any of timm's {len(timm.list_models())} image models, random init; "
              "num_classes and in_chans from the dataset; model_args go to timm.create_model):",
              "  e.g. timm:resnet18, timm:vit_tiny_patch16_224 (model_args: {img_size: 32}), timm:vgg11_bn"]
    return "\n".join(lines + _spec_plugins("model"))


def list_datasets() -> str:
    """Dataset specs and their loader arguments."""
    from bench.data import digits, hub, text

    lines = ["sklearn:digits  scikit-learn's bundled digits: 1797 real 8×8 grey images, 10 classes; args:"]
    lines += _args_lines(digits.ALLOWED_ARGS)
    lines += ["", "builtin:text  byte-level language modelling over the Python standard library's sources "
              "(257 token ids, no download); args:"]
    lines += _args_lines(text.ALLOWED_ARGS)
    lines += ["", "hf:<dataset>  datasets.load_dataset on a connected machine, or from the local cache with "
              "HF_HUB_OFFLINE=1 (e.g. hf:cifar10, hf:wikitext with config: wikitext-103-raw-v1); "
              "hf:<directory> for a local dataset directory; args:"]
    lines += _args_lines(hub.ALLOWED_ARGS)
    lines += ["", f"<path>{'|'.join(hub.LOCAL_BUILDERS)}  a local data file read by datasets (images: an image and a "
              "label column; text: a text column); the same args as hf: except config and revision"]
    return "\n".join(lines + _spec_plugins("dataset"))


def list_optimizers() -> str:
    """Every built-in optimizer with its settings, defaults and meanings, then the installed
    plug-ins with where each comes from (or why it cannot be used)."""
    import optimizers
    from optimizers.plugins import GROUPS

    def doc_line(name: str) -> str:
        doc = (inspect.getdoc(optimizers.settings_model(name)) or "").splitlines()
        return doc[0] if doc else ""

    lines = []
    for name in optimizers.available():
        lines += [f"{name}  {doc_line(name)}", *_settings_lines(name), ""]
    found = optimizers.installed_plugins()
    lines.append(_plugin_header(GROUPS["optimizer"], "module.path:Class", not found))
    for name, origin in found:
        problem = optimizers.check_name(name)
        if problem:
            lines += [f"  {name}  cannot be used: {problem}", f"    from: {origin}"]
            continue
        lines += [f"  {name}  {doc_line(name)}", f"    from: {origin}",
                  f"    requires_full_matrices: {json.dumps(optimizers.requires_full_matrices(name))}",
                  "    settings:", *_settings_lines(name, "      ")]
    return "\n".join(lines).rstrip()


LISTINGS = {"models": list_models, "datasets": list_datasets, "optimizers": list_optimizers}
