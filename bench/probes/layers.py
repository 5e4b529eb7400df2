"""Which layers the curvature probe measures, and why the others are not measured.

docs/science/quantities.md is about weight *matrices*: a layer is a weight W (m × n) acting as ``out = W·a`` on
an input vector a, with conv kernels reshaped ``weight.reshape(out, -1)`` (out × in·kh·kw). The
layer types come from the one tagger of the suite, `optimizers.layer_types.tag_modules`.

Probed (one `ProbedLayer` each):

- ``conv``, ``conv_stem`` (``nn.Conv1d``/``nn.Conv2d``), ``linear``, ``attn_q/k/v``, ``attn_out``,
  ``mlp_up/gate/down``, ``head`` (``nn.Linear`` or GPT-2's ``Conv1D``, whose in × out storage the
  matrix view transposes);
- ``attn_qkv`` (a fused ``nn.Linear`` such as timm/builtin ``qkv``, or GPT-2's ``Conv1D`` ``c_attn``):
  split into three layers ``<module>.q``, ``<module>.k``, ``<module>.v`` of types ``attn_q/k/v``, each
  the block of rows of the fused matrix view given by `optimizers.layer_types.qkv_split`. They
  share the fused module's input A; their δ is the matching slice of the fused output gradient.

Partially probed (σ_k and h_k exact; the Kronecker columns NaN; also listed in ``unsupported``
with ``partial=True``):

- **decision** ``depthwise_conv`` and every grouped conv (``groups > 1``): output channel c only sees
  the input channels of its group, so the layer is not ``W·a`` with one input vector shared by all
  rows of W, and the Kronecker model C_δ ⊗ C_A of §1 does not describe its Fisher block (the
  depthwise block is diagonal across channels). The exact quantities are still well defined on
  the C × kh·kw matrix view (rank ≤ kh·kw, so K ≤ 9 for 3×3 kernels).
- layers with m or n above ``max_factor_dim`` (an m × m factor of an LM head over a 50k
  vocabulary would need 10 GB).

Not probed (listed in ``unsupported`` with the reason, never skipped silently): embeddings, norm
layers, ``other`` modules, module-less ≥2-D parameters (``pos_embed``, ``cls_token``…),
``nn.MultiheadAttention`` (its fused in-projection is applied inside
``F.multi_head_attention_forward``, where no module hook sees its output), transposed and 3-D
convs, frozen weights, weights tied to another module (GPT-2's ``lm_head`` is ``wte``: the gradient
and Hessian of the shared tensor include the embedding use, which the head's factors do not
describe), fused QKV widths not divisible by 3, and modules that are never called during the
forward pass (e.g. ``nn.MultiheadAttention.out_proj``, whose weight its parent uses functionally).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from optimizers.layer_types import is_conv1d_transposed, matrix_view, qkv_split, tag_modules

#: Layer types whose weight is probed (``attn_qkv`` is probed as its three views).
PROBED_TYPES: frozenset[str] = frozenset(
    {
        "conv", "conv_stem", "depthwise_conv", "linear", "attn_q", "attn_k", "attn_v", "attn_qkv",
        "attn_out", "mlp_up", "mlp_gate", "mlp_down", "head",
    }
)

_NOT_PROBED_REASONS = {
    "embedding": "embedding: a lookup table, not a matrix applied to an input vector (its input "
    "is a one-hot id, its n × n factor the vocabulary size squared); not a docs/science/quantities.md layer",
    "norm": "norm layer: a per-feature gain/shift, no matrix view",
    "other": "weight of an unrecognised module type: the probe only knows Linear-like and conv "
    "layers",
}


@dataclass(frozen=True)
class ProbedLayer:
    """One weight matrix the probe measures.

    Attributes:
        name: layer name in the results: the module path, plus ``.q``/``.k``/``.v`` for the views
            of a fused QKV projection.
        module_name: path of the module that owns the weight (``named_modules`` name).
        param_name: the weight's name in ``named_parameters`` (``<module_name>.weight``).
        layer_type: the type of `optimizers.layer_types.LAYER_TYPES` (``attn_q/k/v`` for views).
        kind: ``"linear"`` (rows of A are the input's last axis, one row per sample and leading
            position) or ``"conv"`` (im2col patches, one row per sample and output position).
        rows: ``(start, stop)`` of this layer's rows in the module's out × in matrix view, i.e. of
            the module's output features; the whole matrix except for fused QKV views.
        shape: ``(m, n)`` of this layer's matrix view.
        kronecker: whether the Kronecker quantities (C_δ, C_A, ρ, Φ, Λ, χ, concentration) are
            computed; σ_k and h_k always are.
        note: why ``kronecker`` is False.
        depth: index of the owning module among probeable modules in forward order (q/k/v views
            of one module share it); -1 until `order_by_forward` has run.
    """

    name: str
    module_name: str
    param_name: str
    layer_type: str
    kind: Literal["linear", "conv"]
    rows: tuple[int, int]
    shape: tuple[int, int]
    kronecker: bool = True
    note: str = ""
    depth: int = -1


@dataclass(frozen=True)
class UnsupportedLayer:
    """A weight-bearing module (or module-less matrix parameter) the probe does not fully measure.

    ``partial`` is True when σ_k and h_k are still reported for it and only the Kronecker
    quantities are missing.
    """

    name: str
    layer_type: str
    reason: str
    partial: bool = False


@dataclass
class LayerSelection:
    """The probed layers (in forward order once ordered) and everything else, with reasons."""

    layers: list[ProbedLayer] = field(default_factory=list)
    unsupported: list[UnsupportedLayer] = field(default_factory=list)

    def modules(self) -> list[str]:
        """Distinct owning modules of the probed layers, in the order of ``layers``."""
        return list(dict.fromkeys(layer.module_name for layer in self.layers))


def _shared_owners(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) → every module path that holds it directly (tied weights have several)."""
    owners: dict[int, list[str]] = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        for _, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), [])
            if path not in owners[id(p)]:
                owners[id(p)].append(path)
    return owners


def _module_problem(mod: nn.Module) -> str | None:
    """Why a conv/Linear-like module cannot be probed at all, or None."""
    if isinstance(mod, nn.MultiheadAttention):
        return ("nn.MultiheadAttention: its fused in-projection is applied inside "
                "F.multi_head_attention_forward, so no module hook sees the q/k/v outputs")
    if isinstance(mod, nn.modules.conv._ConvNd):
        if mod.transposed:
            return "transposed convolution: im2col factors are not implemented for it"
        if mod.weight.ndim not in (3, 4):
            return f"{mod.weight.ndim - 2}-D convolution: im2col (F.unfold) covers 1-D and 2-D only"
        return None
    if isinstance(mod, nn.Linear) or is_conv1d_transposed(mod):
        return None
    return f"module class {type(mod).__name__} is not Linear-like or a conv"


def _layers_of_module(
    path: str, mod: nn.Module, tag: str, max_factor_dim: int
) -> tuple[list[ProbedLayer], list[UnsupportedLayer]]:
    """The probed layer(s) of one weight-bearing module of a probed type (plus partial notes)."""
    weight = mod.weight
    view = matrix_view(weight, tag, mod)
    m_total, n = int(view.shape[0]), int(view.shape[1])
    kind: Literal["linear", "conv"] = "conv" if isinstance(mod, nn.modules.conv._ConvNd) else "linear"
    pname = f"{path}.weight" if path else "weight"
    label = path or "<root>"  # a bare Linear/conv passed as the model has the empty module path
    kron, note = True, ""
    if kind == "conv" and mod.groups > 1:
        kron = False
        note = (f"grouped conv (groups={mod.groups}): each output channel sees only its own input "
                "group, so the layer is not W·a with one shared input and the Kronecker model does "
                "not apply; σ_k and h_k are exact, Kronecker columns are NaN")
    if tag == "attn_qkv":
        if m_total % 3:
            return [], [UnsupportedLayer(label, tag, f"fused QKV output width {m_total} is not "
                                         "divisible by 3 (unequal q/k/v widths are not known here)")]
        # qkv_split on the out × in view (module=None: already out-major) gives the row blocks.
        views = qkv_split(view, "attn_qkv", None)
        layers, start = [], 0
        for key in ("q", "k", "v"):
            m = int(views[key].shape[0])
            layers.append(ProbedLayer(f"{label}.{key}", path, pname, f"attn_{key}", kind,
                                      (start, start + m), (m, n), kron, note))
            start += m
    else:
        layers = [ProbedLayer(label, path, pname, tag, kind, (0, m_total), (m_total, n), kron, note)]
    partial: list[UnsupportedLayer] = []
    big = [f"{s}={d}" for s, d in (("m", layers[0].shape[0]), ("n", n)) if d > max_factor_dim]
    if kron and big:
        note = (f"{', '.join(big)} exceeds max_factor_dim={max_factor_dim}: the Kronecker factor "
                "would not fit; σ_k and h_k are exact, Kronecker columns are NaN")
        layers = [replace(layer, kronecker=False, note=note) for layer in layers]
    for layer in layers:
        if not layer.kronecker:
            partial.append(UnsupportedLayer(layer.name, layer.layer_type, layer.note, partial=True))
    return layers, partial


def select_layers(model: nn.Module, max_factor_dim: int = 8192) -> LayerSelection:
    """Every probeable layer of ``model`` (registration order) and every unprobeable one.

    Forward order, depth, name patterns and ``max_layers`` are applied later by
    :func:`order_by_forward` and :func:`filter_layers`, because forward order needs a forward pass.
    """
    tags = tag_modules(model)
    modules = dict(model.named_modules())
    owners = _shared_owners(model)
    selection = LayerSelection()
    covered: set[int] = set()
    for path, tag in tags.items():
        mod = modules[path]
        weight = getattr(mod, "weight", None)
        if isinstance(weight, torch.Tensor):
            covered.add(id(weight))
        if tag not in PROBED_TYPES:
            selection.unsupported.append(UnsupportedLayer(path, tag, _NOT_PROBED_REASONS.get(tag, tag)))
            continue
        problem = _module_problem(mod)
        if problem is None and not isinstance(weight, nn.Parameter):
            problem = "no weight parameter"
        if problem is None and not weight.requires_grad:
            problem = "frozen weight (requires_grad=False): it has no gradient to probe"
        if problem is None and len(owners.get(id(weight), [])) > 1:
            others = [o for o in owners[id(weight)] if o != path]
            problem = (f"weight is tied to {', '.join(others)}: the gradient and Hessian of the shared "
                       "tensor include the other use, which this module's Kronecker factors do not see")
        if problem is not None:
            selection.unsupported.append(UnsupportedLayer(path, tag, problem))
            continue
        layers, partial = _layers_of_module(path, mod, tag, max_factor_dim)
        selection.layers += layers
        selection.unsupported += partial
    # Module-less matrices (timm pos_embed/cls_token, custom raw nn.Parameter weights): not a
    # module the tagger sees, but weight-bearing all the same.
    for name, p in model.named_parameters():
        if p.ndim >= 2 and id(p) not in covered:
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            if owner in tags:
                continue  # an extra parameter of a tagged module (e.g. MHA's in_proj_weight)
            selection.unsupported.append(UnsupportedLayer(
                name, "other", "parameter not held as the weight of a module: the probe needs a "
                "module whose forward hook sees the input the matrix multiplies"))
    return selection


def order_by_forward(
    model: nn.Module, selection: LayerSelection, run_forward: Callable[[], object]
) -> LayerSelection:
    """Sort probed layers by the first call of their module in one forward pass, set ``depth``.

    Modules that are never called are moved to ``unsupported``: their inputs and output
    gradients cannot be observed (a parent may still use the weight functionally, as
    ``nn.MultiheadAttention`` does with ``out_proj``).
    """
    modules = dict(model.named_modules())
    first_call: dict[str, int] = {}

    def make_hook(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object) -> None:
            first_call.setdefault(path, len(first_call))
        return hook

    handles = [modules[p].register_forward_pre_hook(make_hook(p)) for p in selection.modules()]
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for h in handles:
            h.remove()
    out = LayerSelection(unsupported=list(selection.unsupported))
    called = sorted({layer.module_name for layer in selection.layers if layer.module_name in first_call},
                    key=first_call.__getitem__)
    depth = {path: i for i, path in enumerate(called)}
    for layer in selection.layers:
        if layer.module_name in depth:
            out.layers.append(replace(layer, depth=depth[layer.module_name]))
        else:
            out.unsupported.append(UnsupportedLayer(
                layer.name, layer.layer_type, "module is never called during the forward pass (if "
                "its weight is used, a parent applies it functionally and no hook can see its input)"))
    # Stable sort keeps q, k, v of one module in that order.
    out.layers.sort(key=lambda layer: layer.depth)
    return out


def _matches(name: str, module_name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(module_name, p) for p in patterns)


def filter_layers(
    selection: LayerSelection, patterns: list[str] | None = None, max_layers: int | None = None
) -> LayerSelection:
    """Keep layers whose name or module name matches a pattern, then the first ``max_layers``
    modules in order (q/k/v views of one module count once). Unsupported entries are filtered by
    the same patterns, so a narrowed probe does not report the whole model's norms."""
    layers = selection.layers
    unsupported = selection.unsupported
    if patterns:
        layers = [layer for layer in layers if _matches(layer.name, layer.module_name, patterns)]
        unsupported = [u for u in unsupported if _matches(u.name, u.name.rsplit(".", 1)[0], patterns)]
    if max_layers is not None:
        keep = set(list(dict.fromkeys(layer.module_name for layer in layers))[:max_layers])
        layers = [layer for layer in layers if layer.module_name in keep]
        names = {layer.name for layer in layers}
        unsupported = [u for u in unsupported if not u.partial or u.name in names]
    if patterns and not layers:
        raise ValueError(f"no probeable layer matches {patterns}")
    return LayerSelection(list(layers), list(unsupported))
