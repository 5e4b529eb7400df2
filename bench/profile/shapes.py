"""Named sets of weight-matrix shapes taken from real models, with how many matrices of each.

A *shape set* is the list of matrices that Spectral Newton transforms in one optimizer step of a
model: every parameter that ``optimizers.param_groups.assign_parameters`` sends to the spectral
group (the project's own routing: biases, norms, embeddings and the output head go to AdamW),
in its "out × in" matrix view (``optimizers.layer_types.matrix_view``: conv kernels reshaped
out × (in·kh·kw), GPT-2's ``Conv1D`` transposed from its in × out storage). Matrices that share a
role and a shape are grouped with a ``count``, so that whole-model costs are

    cost(model) = Σ_shapes count · cost(m, n).

This is the one catalogue of model shapes: the kernel profile, the optimizer-step and
spectral-step measurements (through :func:`build_model`) and the cost model's whole-model
predictions (through the profile table's ``op = shape`` rows) all take their models from here.

Where the shapes come from:

- ResNet-18/50 and ViT-Tiny/Base: ``timm.create_model(name, pretrained=False)`` instantiated on
  the meta device (no memory, no download), then the project's own parameter routing;
- GPT-2 small/medium: ``transformers.GPT2LMHeadModel(GPT2Config(...))`` on the meta device;
- Llama-7B/70B/405B: typed from the published configs (hidden, intermediate, heads, kv heads,
  layers), since instantiating them even on the meta device is slow and the structure is simple.
  Grouped-query attention makes k/v narrower than q: k, v are (kv_heads · head_dim) × hidden,
  e.g. 1024 × 8192 for Llama-70B (8 kv heads of 128).

A machine without timm or transformers (the GPU image may lack one of them) falls back to a
frozen copy of the derived sets (:mod:`bench.profile._frozen_shapes`); a test checks that the
frozen copy equals a fresh derivation. ``ShapeSet.source`` says which was used.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache


@dataclass(frozen=True)
class MatrixShape:
    """One group of equal-shape matrices of a model (out × in view)."""

    name: str
    """Parameter name with layer indices replaced by ``*`` (``transformer.h.*.attn.c_attn.weight``)."""
    layer_type: str
    """Layer type from ``optimizers.layer_types.LAYER_TYPES`` (conv, attn_qkv, mlp_up, …)."""
    m: int
    """Rows (output side)."""
    n: int
    """Columns (input side)."""
    count: int = 1
    """How many matrices of the model have this role and shape."""

    @property
    def k(self) -> int:
        """The smaller side: the size of every Gram / Newton–Schulz product."""
        return min(self.m, self.n)

    @property
    def key(self) -> tuple[int, int]:
        """Orientation-free identity: every method works on the tall form (max × min)."""
        return (max(self.m, self.n), min(self.m, self.n))


@dataclass(frozen=True)
class ShapeSet:
    """The spectral matrices of one model."""

    name: str
    shapes: tuple[MatrixShape, ...]
    source: str
    """``timm`` / ``transformers`` (derived now), ``frozen`` (copy of a derivation), ``config``
    (typed from a published config) or ``custom``."""
    params: dict[str, int] = field(default_factory=dict)
    """Architecture numbers the set was built from (Llama configs), for the record."""

    @property
    def num_matrices(self) -> int:
        return sum(s.count for s in self.shapes)

    @property
    def num_elements(self) -> int:
        """Parameters covered by the spectral update (Σ count · m · n)."""
        return sum(s.count * s.m * s.n for s in self.shapes)

    def unique(self) -> list[MatrixShape]:
        """One representative per orientation-free shape, in first-seen order."""
        seen: OrderedDict[tuple[int, int], MatrixShape] = OrderedDict()
        for s in self.shapes:
            seen.setdefault(s.key, s)
        return list(seen.values())


# ------------------------------------------------------------------------------ published configs
@dataclass(frozen=True)
class LlamaConfig:
    """The numbers of a Llama architecture that fix its projection shapes."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


#: Published configs: Llama-2-7B (same as LLaMA-1 7B), Llama-2/3-70B and Llama-3.1-405B.
LLAMA_CONFIGS: dict[str, LlamaConfig] = {
    "llama-7b": LlamaConfig(hidden=4096, intermediate=11008, heads=32, kv_heads=32, layers=32),
    "llama-70b": LlamaConfig(hidden=8192, intermediate=28672, heads=64, kv_heads=8, layers=80),
    "llama-405b": LlamaConfig(hidden=16384, intermediate=53248, heads=128, kv_heads=8, layers=126),
}

#: timm models whose shape sets are derived by instantiation.
TIMM_MODELS: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "vit-tiny": "vit_tiny_patch16_224",
    "vit-base": "vit_base_patch16_224",
}

#: GPT-2 sizes (transformers ``GPT2Config`` arguments); small is the config's default.
GPT2_MODELS: dict[str, dict[str, int]] = {
    "gpt2-small": {"n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
}


def llama_shapes(name: str, cfg: LlamaConfig) -> ShapeSet:
    """Projection matrices of a Llama model (out × in, as ``nn.Linear`` stores them).

    Per layer: q (hidden × hidden), k and v ((kv_heads·head_dim) × hidden: grouped-query
    attention), o (hidden × hidden), gate and up (intermediate × hidden), down
    (hidden × intermediate). Embeddings and the LM head go to AdamW and are not listed.
    """
    kv = cfg.kv_heads * cfg.head_dim
    h, f, L = cfg.hidden, cfg.intermediate, cfg.layers
    rows = [
        ("layers.*.self_attn.q_proj.weight", "attn_q", h, h),
        ("layers.*.self_attn.k_proj.weight", "attn_k", kv, h),
        ("layers.*.self_attn.v_proj.weight", "attn_v", kv, h),
        ("layers.*.self_attn.o_proj.weight", "attn_out", h, h),
        ("layers.*.mlp.gate_proj.weight", "mlp_gate", f, h),
        ("layers.*.mlp.up_proj.weight", "mlp_up", f, h),
        ("layers.*.mlp.down_proj.weight", "mlp_down", h, f),
    ]
    shapes = tuple(MatrixShape(n, t, m, nn, L) for n, t, m, nn in rows)
    return ShapeSet(name, shapes, "config", params=dict(vars(cfg)))


# ------------------------------------------------------------------------------------ derivation
_INDEX = re.compile(r"\.\d+(?=\.)")


def _pattern(param_name: str) -> str:
    """``layer1.0.conv1.weight`` → ``layer1.*.conv1.weight``: group repeated blocks."""
    return _INDEX.sub(".*", param_name)


def shapes_of_model(model, name: str, source: str) -> ShapeSet:
    """The spectral matrices of an instantiated ``torch.nn.Module`` (meta device is fine).

    Uses the optimizer's own routing (``assign_parameters`` with its default AdamW types) so the
    set is exactly what Spectral Newton would transform.
    """
    from optimizers.layer_types import matrix_view, owner_modules, tag_parameters
    from optimizers.param_groups import MATRIX, assign_parameters

    types = tag_parameters(model)
    groups = assign_parameters(model, layer_types=types)
    owners = owner_modules(model)
    counts: OrderedDict[tuple[str, str, int, int], int] = OrderedDict()
    for pname, param in model.named_parameters():
        if groups.get(pname) != MATRIX:
            continue
        view = matrix_view(param, types[pname], owners.get(pname))
        key = (_pattern(pname), types[pname], int(view.shape[0]), int(view.shape[1]))
        counts[key] = counts.get(key, 0) + 1
    shapes = tuple(MatrixShape(n, t, m, k, c) for (n, t, m, k), c in counts.items())
    return ShapeSet(name, shapes, source)


#: Sets whose model this module can build (:func:`build_model`); the Llama sets are typed only.
INSTANTIABLE: tuple[str, ...] = (*TIMM_MODELS, *GPT2_MODELS)


def build_model(name: str, device: str = "meta", blocks: int | None = None, dim: int | None = None):
    """The ``torch.nn.Module`` of a catalogue model, randomly initialised on ``device``.

    timm models come from ``timm.create_model(pretrained=False)``; GPT-2 from a transformers
    ``GPT2Config`` (``GPT2LMHeadModel``), or, with ``blocks``, only that many ``GPT2Block``
    modules in a ``Sequential`` (the matrices whose optimizer work dominates a step, without
    the embeddings and head), optionally of width ``dim`` (one attention head then: heads change
    no parameter shape). The derivation of the shape sets (meta device) and the optimizer-step
    and spectral-step measurements (real device) build the same modules.
    """
    import torch

    if name in TIMM_MODELS:
        import timm

        with torch.device(device):
            return timm.create_model(TIMM_MODELS[name], pretrained=False)
    if name not in GPT2_MODELS:
        raise KeyError(f"{name!r} cannot be instantiated; known: {', '.join(INSTANTIABLE)}")
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    args = dict(GPT2_MODELS[name])
    if dim is not None:
        args.update(n_embd=dim, n_head=1)
    config = GPT2Config(**args)
    with torch.device(device):
        if blocks is None:
            return GPT2LMHeadModel(config)
        return torch.nn.Sequential(*(GPT2Block(config, layer_idx=i) for i in range(blocks)))


def derive(name: str) -> ShapeSet:
    """A fresh derivation of a timm or GPT-2 set (raises ImportError without the library)."""
    if name not in INSTANTIABLE:
        raise KeyError(f"{name!r} is not a derived shape set")
    return shapes_of_model(build_model(name), name, "timm" if name in TIMM_MODELS else "transformers")


def frozen(name: str) -> ShapeSet:
    """The frozen copy of a derived set (no timm / transformers needed)."""
    from bench.profile._frozen_shapes import FROZEN

    return ShapeSet(name, tuple(MatrixShape(*row) for row in FROZEN[name]), "frozen")


# ------------------------------------------------------------------------------------- registry
def available() -> list[str]:
    """Every named shape set."""
    return [*TIMM_MODELS, *GPT2_MODELS, *LLAMA_CONFIGS]


@cache
def get(name: str, source: str = "auto") -> ShapeSet:
    """The shape set ``name``.

    ``source``: ``auto`` (derive when the library is importable, else the frozen copy),
    ``derived`` (derive or raise ImportError) or ``frozen``. Llama sets are always typed from
    their configs.
    """
    if name in LLAMA_CONFIGS:
        return llama_shapes(name, LLAMA_CONFIGS[name])
    if name not in TIMM_MODELS and name not in GPT2_MODELS:
        raise KeyError(f"unknown shape set {name!r}; known: {', '.join(available())}")
    if source == "frozen":
        return frozen(name)
    try:
        return derive(name)
    except ImportError:
        if source == "derived":
            raise
        return frozen(name)


def custom(name: str, shapes: Iterable[tuple[str, int, int, int]]) -> ShapeSet:
    """A set from ``(name, m, n, count)`` tuples (configs and tests)."""
    return ShapeSet(name, tuple(MatrixShape(n, "other", m, k, c) for n, m, k, c in shapes), "custom")


def freeze_source(names: Iterable[str] | None = None) -> str:
    """Python source of :mod:`bench.profile._frozen_shapes` from fresh derivations."""
    names = list(names) if names is not None else [*TIMM_MODELS, *GPT2_MODELS]
    lines = [
        '"""Frozen copy of the derived shape sets (generated by',
        "``python -m bench.profile.shapes --freeze``; checked against a fresh derivation by",
        'tests/test_profile_shapes.py). Rows: (name, layer_type, m, n, count)."""',
        "",
        "FROZEN: dict[str, list[tuple[str, str, int, int, int]]] = {",
    ]
    for name in names:
        lines.append(f"    {name!r}: [")
        for s in derive(name).shapes:
            lines.append(f"        ({s.name!r}, {s.layer_type!r}, {s.m}, {s.n}, {s.count}),")
        lines.append("    ],")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freeze", action="store_true", help="print the frozen-copy module's source")
    parser.add_argument("names", nargs="*", help="sets to list (default: all)")
    args = parser.parse_args()
    if args.freeze:
        print(freeze_source(), end="")
        return
    for name in args.names or available():
        s = get(name)
        print(f"{name} ({s.source}): {s.num_matrices} matrices, {s.num_elements / 1e6:.1f} M parameters")
        for shape in s.shapes:
            print(f"  {shape.count:>4} × {shape.m:>6} × {shape.n:<6} {shape.layer_type:<10} {shape.name}")


if __name__ == "__main__":
    _main()
