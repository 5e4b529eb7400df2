"""``timm:<name>`` — any timm image model, randomly initialised, sized from the task.

    timm.create_model(name, pretrained=False, num_classes=task.num_classes,
                      in_chans=task.input_shape[0], **args)

Args pass through to `timm.create_model` (and from there to the model class), so they are the
model's own keyword arguments (``drop_rate``, ``img_size`` for ViTs, ...). Because those differ
per model, `validate_args` finds unknown ones by building the model on the ``meta`` device,
which allocates no memory.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from bench.data.task import TaskInfo
from bench.problems import shown

#: Arguments the registry sets itself; a config may not override them.
RESERVED = {
    "pretrained": "weights are always randomly initialised (no downloads)",
    "num_classes": "comes from the dataset",
    "in_chans": "comes from the dataset",
}


def check_name(name: str) -> str | None:
    """Problem with the part after ``timm:``, or None (`timm.is_model` is a registry lookup)."""
    import timm

    if not name:
        return "empty model name after 'timm:'"
    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown timm model {shown(name)}{hint}"


def allowed_args(name: str) -> None:
    """None: any keyword of the model is accepted here and checked by `validate_args`."""
    return None


def validate_args(name: str, args: dict[str, Any]) -> list[str]:
    """Reserved args, and args the model's constructor rejects (found by a meta-device build)."""
    import timm
    import torch

    problems = [f"{key}: {why}" for key, why in RESERVED.items() if key in args]
    if problems:
        return problems
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, num_classes=10, in_chans=3, **args)
    except TypeError as e:
        problems.append(f"timm model {name!r} rejects its args: {e}")
    except Exception:
        # Some models cannot be built on the meta device at all; the real build will tell.
        pass
    return problems


def build(name: str, task: TaskInfo, args: dict[str, Any]) -> nn.Module:
    """Build ``timm:<name>`` for an image-classification ``task``."""
    import timm

    if task.kind != "classification" or task.input_shape is None:
        raise ValueError(
            f"model 'timm:{name}' needs an image-classification task, the dataset is {task.kind!r}"
        )
    bad = [key for key in RESERVED if key in args]
    if bad:
        raise ValueError(f"model 'timm:{name}': {', '.join(bad)} cannot be set in args")
    return timm.create_model(
        name, pretrained=False, num_classes=task.num_classes, in_chans=task.input_shape[0], **args
    )
