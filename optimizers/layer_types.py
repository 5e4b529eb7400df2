"""Layer types: the closed vocabulary shared by probes, optimizers and analysis.

Every parameter of a model gets exactly one type from :data:`LAYER_TYPES` (docs/science/quantities.md reports
curvature exponents per layer *type*; §5's ``by_layer_type`` α policy is keyed by it). The tagger
works on module classes and on the naming conventions of timm, Hugging Face transformers
(GPT-2, Llama, BERT-like) and plain ``torch.nn`` models, without importing either library:
classes are recognised by ``isinstance`` for ``torch.nn`` and by duck typing otherwise.

Also here: the "out × in" matrix view of a weight (:func:`matrix_view`, a tensor; docs/science/quantities.md:
conv kernels are reshaped ``weight.reshape(out, -1)``; GPT-2's ``Conv1D`` stores in × out and is
transposed), the shape of that matrix from a parameter shape alone (:func:`matrix_shape`), and the
split of a fused QKV weight into q/k/v views.

Shapes are read with :func:`param_shape`, never ``tensor.shape`` alone: a parameter created under
DeepSpeed's ``zero.Init`` (ZeRO-3) is an empty placeholder whose real shape is ``ds_shape``, and
tagging or grouping the placeholder would silently send every matrix to AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

LAYER_TYPES: tuple[str, ...] = (
    "conv",
    "conv_stem",
    "depthwise_conv",
    "linear",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_out",
    "mlp_up",
    "mlp_gate",
    "mlp_down",
    "embedding",
    "head",
    "norm",
    "bias",
    "other",
)

# --- naming conventions (last path component of a Linear-like module) ------------------------
# Fused q/k/v projections: timm `qkv`, GPT-2 `c_attn`, MPT `Wqkv`, GPT-NeoX `query_key_value`,
# Baichuan `W_pack`, generic `in_proj`/`qkv_proj`.
_QKV_NAMES = {"qkv", "c_attn", "in_proj", "qkv_proj", "wqkv", "query_key_value", "w_pack"}
_Q_NAMES = {"q_proj", "q", "query", "to_q", "wq", "q_lin"}
_K_NAMES = {"k_proj", "k", "key", "to_k", "wk", "k_lin"}
_V_NAMES = {"v_proj", "v", "value", "to_v", "wv", "v_lin"}
# Attention output projections that are unambiguous on their own.
_ATTN_OUT_NAMES = {"o_proj", "out_proj", "wo", "to_out", "out_lin"}
# Names that mean "attention output" only inside an attention block (`attn.proj`, `attn.c_proj`,
# BERT's `attention.output.dense`) and "MLP down" inside an MLP block (`mlp.c_proj`).
_CONTEXT_PROJ_NAMES = {"proj", "c_proj", "dense", "out", "dense_4h_to_h"}
_MLP_UP_NAMES = {"fc1", "c_fc", "up_proj", "fc_in", "lin1", "wi", "dense_h_to_4h", "w_in"}
_MLP_GATE_NAMES = {"gate_proj", "w_gate", "gate"}
_MLP_DOWN_NAMES = {"fc2", "down_proj", "fc_out", "lin2", "w_out", "dense_4h_to_h"}
# Meta's Llama/Mixtral feed-forward naming: w1 = gate, w3 = up, w2 = down.
_META_FFN = {"w1": "mlp_gate", "w3": "mlp_up", "w2": "mlp_down"}
_ATTN_CONTEXT = ("attn", "attention")
_MLP_CONTEXT = ("mlp", "ffn", "feed_forward", "feedforward", "intermediate", "ff")
# Output heads by name. `fc` is a head only at the top level (torchvision/timm ResNet `fc`) or
# directly under a `head` container (timm `head.fc`); elsewhere it is a plain hidden layer.
_HEAD_NAMES = {"head", "lm_head", "classifier", "score", "output_layer", "logits"}
# Direct (module-less) parameters that are embeddings: positional tables and special tokens.
_EMBEDDING_PARAM_HINTS = (
    "pos_embed",
    "pos_emb",
    "position",
    "cls_token",
    "dist_token",
    "reg_token",
    "mask_token",
    "register_token",
    "relative_position_bias_table",
    "wpe",
    "wte",
)
_STEM_CONTEXT = ("stem", "patch_embed", "conv_stem")


def param_shape(param: torch.Tensor) -> tuple[int, ...]:
    """The real shape of a parameter: ``ds_shape`` for a ZeRO-3 partitioned one (whose ``shape`` is
    that of its empty or flat placeholder), else ``shape``."""
    ds_shape = getattr(param, "ds_shape", None)
    return tuple(int(d) for d in (ds_shape if ds_shape is not None else param.shape))


def param_ndim(param: torch.Tensor) -> int:
    """The number of dimensions of :func:`param_shape`."""
    return len(param_shape(param))


def is_conv1d_transposed(module: nn.Module | None) -> bool:
    """True for Hugging Face's GPT-2 ``Conv1D``: a linear layer whose weight is stored in × out.

    Recognised by duck typing (class name ``Conv1D`` plus its ``nf`` attribute equal to the
    weight's second dimension) so this package does not import transformers.
    """
    if module is None or type(module).__name__ != "Conv1D":
        return False
    weight = getattr(module, "weight", None)
    nf = getattr(module, "nf", None)
    if not isinstance(weight, torch.Tensor):
        return False
    shape = param_shape(weight)
    return len(shape) == 2 and nf == shape[1]


def _is_norm(module: nn.Module) -> bool:
    """Normalisation layers: torch's classes, plus any class whose name says Norm (LlamaRMSNorm,
    T5LayerNorm, timm's LayerNorm2d/BatchNormAct2d...)."""
    norm_classes: tuple[type, ...] = (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
    )
    if hasattr(nn, "RMSNorm"):
        norm_classes = norm_classes + (nn.RMSNorm,)
    return isinstance(module, norm_classes) or "norm" in type(module).__name__.lower()


def _is_linear_like(module: nn.Module) -> bool:
    """nn.Linear (incl. NonDynamicallyQuantizableLinear, LazyLinear after init) or GPT-2 Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d_transposed(module)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd)


def _has_direct_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _linear_role(path: str) -> str | None:
    """The transformer role of a Linear-like module from its dotted path, or None if generic."""
    parts = path.lower().split(".")
    leaf = parts[-1]
    parents = parts[:-1]
    in_attn = any(any(c in p for c in _ATTN_CONTEXT) for p in parents)
    in_mlp = any(any(c == p or p.startswith(c) for c in _MLP_CONTEXT) for p in parents)
    if leaf in _QKV_NAMES:
        return "attn_qkv"
    if leaf in _Q_NAMES:
        return "attn_q"
    if leaf in _K_NAMES:
        return "attn_k"
    if leaf in _V_NAMES:
        return "attn_v"
    if leaf in _ATTN_OUT_NAMES:
        return "attn_out"
    if leaf in _MLP_GATE_NAMES:
        return "mlp_gate"
    if leaf in _MLP_UP_NAMES:
        return "mlp_up"
    if leaf in _MLP_DOWN_NAMES:
        return "mlp_down"
    if leaf in _META_FFN and (in_mlp or not in_attn):
        return _META_FFN[leaf]
    if leaf in _CONTEXT_PROJ_NAMES:
        # The nearest block-like ancestor decides: GPT-2 `attn.c_proj` vs `mlp.c_proj`; BERT
        # `attention.output.dense` (attn_out), `intermediate.dense` (mlp_up) and
        # `layer.N.output.dense` (mlp_down, recognised only when nothing nearer decides).
        for parent in reversed(parents):
            if any(c in parent for c in _ATTN_CONTEXT):
                return "attn_out"
            if parent == "intermediate":
                return "mlp_up"
            if any(parent == c or parent.startswith(c) for c in _MLP_CONTEXT):
                return "mlp_down"
        if "output" in parents:
            return "mlp_down"
    return None


def _head_modules(model: nn.Module) -> set[int]:
    """ids of the output-head modules.

    The first rule that finds anything wins: timm's ``get_classifier()`` / transformers'
    ``get_output_embeddings()``; modules named ``head``, ``lm_head``, ``classifier``…; the last
    Linear inside a container with such a name; a top-level ``fc``; finally "the last
    Linear-like module that has no transformer role" (a plain CNN/MLP classifier's final layer). The fallback never picks a module with a
    role, so a tied-embedding LM without a head module does not get its last MLP called a head.
    """
    heads: set[int] = set()
    for getter in ("get_classifier", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                mod = fn()
            except Exception:  # noqa: BLE001 - a model's own accessor may be unimplemented
                mod = None
            if isinstance(mod, nn.Module) and "weight" in dict(mod.named_parameters(recurse=False)):
                heads.add(id(mod))
    named = list(model.named_modules())
    linears = [(p, m) for p, m in named if p and (_is_linear_like(m) or _is_conv(m))]
    if not heads:
        heads = {id(m) for p, m in linears if p.lower().split(".")[-1] in _HEAD_NAMES}
    if not heads:
        # A head *container* (torchvision VGG `classifier` Sequential): its last Linear is the head.
        for path, mod in named:
            leaf = path.lower().split(".")[-1] if path else ""
            if leaf in _HEAD_NAMES and not _has_direct_params(mod):
                inner = [m for _, m in mod.named_modules() if _is_linear_like(m)]
                if inner:
                    heads.add(id(inner[-1]))
    if not heads:
        # torchvision ResNet: a top-level `fc` is the classifier (only when nothing is named head,
        # so a hidden `fc` next to a `head` stays a plain linear layer).
        heads = {id(m) for p, m in linears if p.lower() == "fc" and _is_linear_like(m)}
    if not heads:
        plain = [(p, m) for p, m in linears if _is_linear_like(m)]
        if plain and _linear_role(plain[-1][0]) is None:
            heads.add(id(plain[-1][1]))
    return heads


def tag_modules(model: nn.Module) -> dict[str, str]:
    """Map every weight-bearing module's dotted name to its layer type.

    "Weight-bearing" means a module with a direct parameter called ``weight`` (or, for
    ``nn.MultiheadAttention``, ``in_proj_weight``). Rules, first match wins:

    1. norm classes → ``norm``; ``nn.Embedding``/``EmbeddingBag`` → ``embedding``;
    2. output head (see :func:`_head_modules`) → ``head``;
    3. convs: the first conv in registration order, or any conv under a ``stem``/``patch_embed``
       path → ``conv_stem``; ``groups == in_channels > 1`` → ``depthwise_conv``; else ``conv``;
    4. ``nn.MultiheadAttention`` → ``attn_qkv`` (its fused ``in_proj_weight``);
    5. Linear-like modules (incl. GPT-2 ``Conv1D``) → a transformer role by name
       (``attn_q/k/v/qkv``, ``attn_out``, ``mlp_up/gate/down``) or else ``linear``;
    6. anything else → ``other``.
    """
    heads = _head_modules(model)
    tags: dict[str, str] = {}
    first_conv_seen = False
    for path, mod in model.named_modules():
        direct = dict(mod.named_parameters(recurse=False))
        if "weight" not in direct and "in_proj_weight" not in direct:
            if _is_conv(mod):
                first_conv_seen = True  # a weightless conv still occupies the stem position
            continue
        tag: str
        if _is_norm(mod) and not (_is_linear_like(mod) or _is_conv(mod)):
            tag = "norm"
        elif isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
            tag = "embedding"
        elif id(mod) in heads:
            tag = "head"
        elif _is_conv(mod):
            lowered = path.lower().split(".")
            if not first_conv_seen or any(p in _STEM_CONTEXT for p in lowered):
                tag = "conv_stem"
            elif mod.groups > 1 and mod.groups == mod.in_channels:
                tag = "depthwise_conv"
            else:
                tag = "conv"
            first_conv_seen = True
        elif isinstance(mod, nn.MultiheadAttention):
            tag = "attn_qkv"
        elif _is_linear_like(mod):
            tag = _linear_role(path) or "linear"
        else:
            tag = "other"
        tags[path] = tag
    return tags


def _param_type(
    name: str, param: torch.Tensor, owner: nn.Module, owner_path: str, module_tags: dict[str, str]
) -> str:
    """Type of one parameter given its owning module (see :func:`tag_parameters`)."""
    attr = name.rsplit(".", 1)[-1]
    lowered = attr.lower()
    if lowered == "bias" or (lowered.endswith("bias") and param_ndim(param) <= 1):
        return "bias"
    if any(h in name.lower() for h in _EMBEDDING_PARAM_HINTS) and owner_path not in module_tags:
        return "embedding"
    if isinstance(owner, nn.MultiheadAttention):
        # in_proj_weight (fused) or q/k/v_proj_weight when kdim/vdim differ from embed_dim.
        return {"q_proj_weight": "attn_q", "k_proj_weight": "attn_k", "v_proj_weight": "attn_v"}.get(
            attr, "attn_qkv"
        )
    if owner_path in module_tags:
        tag = module_tags[owner_path]
        if tag == "norm" or _is_norm(owner):
            return "norm"
        if attr == "weight":
            return tag
    if _is_norm(owner):
        return "norm"
    return "other"


def tag_parameters(model: nn.Module) -> dict[str, str]:
    """Map every parameter name of ``model.named_parameters()`` to a layer type.

    Parameters named ``bias`` → ``bias``; parameters of norm layers → ``norm``; module-less
    positional tables and special tokens (``pos_embed``, ``cls_token``…) → ``embedding``; a
    module's ``weight`` gets the module's type from :func:`tag_modules`; anything else →
    ``other``. Tied weights appear once, under their first name (GPT-2's ``lm_head.weight`` is
    ``transformer.wte.weight`` and is tagged ``embedding``; ``tag_modules`` still reports
    ``lm_head`` as ``head``).
    """
    module_tags = tag_modules(model)
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for name, param in model.named_parameters():
        owner_path = name.rsplit(".", 1)[0] if "." in name else ""
        owner = modules.get(owner_path, model)
        out[name] = _param_type(name, param, owner, owner_path, module_tags)
    return out


def owner_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Map every parameter name to the module that directly owns it (for :func:`matrix_view`)."""
    modules = dict(model.named_modules())
    return {
        name: modules.get(name.rsplit(".", 1)[0] if "." in name else "", model)
        for name, _ in model.named_parameters()
    }


# --- matrix views -----------------------------------------------------------------------------


def _transposed_storage(module: nn.Module | None) -> bool:
    """Modules whose weight is stored in × out: GPT-2 ``Conv1D`` (x @ W) and embeddings (a lookup
    is ``Wᵀ · one_hot``, so the output side is the embedding dimension)."""
    return is_conv1d_transposed(module) or isinstance(module, (nn.Embedding, nn.EmbeddingBag))


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """(m, n) of the out × rest matrix of a parameter of ``shape``: m = ``shape[0]``, n = the product
    of the other dimensions (conv kernels: out × in·kh·kw, docs/science/quantities.md); (m, 1) for a vector and
    (1, 1) for a scalar.

    The shape-only counterpart of :func:`matrix_view`: without the owning module it cannot see a
    transposed storage (GPT-2 ``Conv1D``), so it serves where orientation does not matter (cost
    estimates, the smaller side of a matrix).
    """
    if len(shape) == 0:
        return 1, 1
    return int(shape[0]), int(math.prod(shape[1:]))


def matrix_view(
    param: torch.Tensor, layer_type: str | None = None, module: nn.Module | None = None
) -> torch.Tensor:
    """The 2-D "out × in" view of a weight (docs/science/quantities.md).

    - 2-D weight: itself, or its transpose when the owning module stores in × out
      (GPT-2 ``Conv1D``, embeddings);
    - conv kernel (out, in/groups, k…): ``weight.reshape(out, -1)``, i.e. out × (in·kh·kw);
    - fewer than 2 dims: ``ValueError`` (biases and norm gains have no matrix view).

    ``layer_type`` is only checked against the vocabulary (for clearer errors); the layout
    decision is made from ``module``. The result is a view whenever ``param`` is contiguous.
    Invert with :func:`from_matrix_view`.
    """
    if layer_type is not None and layer_type not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {layer_type!r}; expected one of {', '.join(LAYER_TYPES)}")
    if param.ndim < 2:
        raise ValueError(
            f"a {param.ndim}-D tensor of shape {tuple(param.shape)} has no matrix view"
            + (f" (layer type {layer_type})" if layer_type else "")
        )
    if param.ndim == 2:
        return param.t() if _transposed_storage(module) else param
    return param.reshape(param.shape[0], -1)


def from_matrix_view(
    matrix: torch.Tensor, shape: torch.Size | tuple[int, ...], module: nn.Module | None = None
) -> torch.Tensor:
    """Inverse of :func:`matrix_view`: turn an out × in matrix back into a tensor of ``shape``."""
    shape = torch.Size(shape)
    if len(shape) == 2 and _transposed_storage(module):
        return matrix.t().reshape(shape)
    return matrix.reshape(shape)


def _find_owner(model: nn.Module, tensor: torch.Tensor) -> nn.Module | None:
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            if p is tensor:
                return mod
    return None


def qkv_split(
    weight: torch.Tensor,
    layer_type: str,
    model_or_module: nn.Module | None = None,
    sizes: Iterable[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Views ``{"q", "k", "v"}`` of a fused QKV weight, bias or gradient.

    The fused projection computes [q; k; v] stacked along the output dimension: dim 0 for
    ``nn.Linear``/timm ``qkv``/``nn.MultiheadAttention.in_proj_weight`` (3E × E), dim 1 for GPT-2's
    ``Conv1D`` ``c_attn`` (E × 3E); a 1-D bias splits along dim 0. ``model_or_module`` is the
    owning module, or a model containing ``weight`` as a parameter (the owner is then found by
    identity). ``sizes`` gives unequal q/k/v widths (grouped-query attention); by default the
    output dimension is split in three equal parts. Concatenating the views along the same
    dimension gives ``weight`` back.
    """
    if layer_type != "attn_qkv":
        raise ValueError(f"qkv_split needs layer type 'attn_qkv' (got {layer_type!r})")
    module = model_or_module
    if module is not None and not is_conv1d_transposed(module):
        direct = dict(module.named_parameters(recurse=False))
        if "weight" not in direct and "in_proj_weight" not in direct:
            # A whole model: find the module that owns this tensor.
            found = _find_owner(module, weight)
            if found is None and any(is_conv1d_transposed(m) for m in module.modules()):
                raise ValueError(
                    "cannot tell the QKV layout: pass the owning module (the tensor is not a "
                    "parameter of the model and the model contains Conv1D layers)"
                )
            module = found
    dim = 1 if (weight.ndim == 2 and is_conv1d_transposed(module)) else 0
    total = weight.shape[dim]
    if sizes is None:
        if total % 3:
            raise ValueError(f"fused QKV dimension {total} is not divisible by 3; pass sizes")
        split_sizes = [total // 3] * 3
    else:
        split_sizes = list(sizes)
        if len(split_sizes) != 3 or sum(split_sizes) != total:
            raise ValueError(f"sizes {split_sizes} must be three widths summing to {total}")
    q, k, v = torch.split(weight, split_sizes, dim=dim)
    return {"q": q, "k": k, "v": v}
