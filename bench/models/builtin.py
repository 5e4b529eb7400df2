"""``builtin:cnn`` and ``builtin:transformer`` — the small models that need no third-party
library, used by the quickstart, CI and the tests.

``builtin:cnn`` classifies images of any small size (`bench.models.cnn`); ``builtin:transformer``
is a causal language model (`bench.models.transformer`). Both take their input and output sizes
from the `TaskInfo` and the rest from args.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bench.data.argcheck import int_problems
from bench.data.task import TaskInfo
from bench.models.cnn import SmallCNN
from bench.models.transformer import TransformerLM
from bench.problems import shown

#: name → {arg → description}
ALLOWED_ARGS: dict[str, dict[str, str]] = {
    "cnn": {
        "channels": "output channels of the three convolutions (default [16, 32, 64])",
        "hidden": "width of the hidden linear layer (default 64)",
    },
    "transformer": {
        "d_model": "embedding width (default 64)",
        "n_layer": "number of transformer blocks (default 2)",
        "n_head": "attention heads; must divide d_model (default 4)",
        "d_ff": "MLP hidden width (default 4 × d_model)",
        "max_seq_len": "longest input, the size of the position table (default: the task's seq_len)",
    },
}

#: The task kind each model can be built for.
TASK_KIND = {"cnn": "classification", "transformer": "lm"}


def check_name(name: str) -> str | None:
    """Problem with the part after ``builtin:``, or None."""
    if name not in ALLOWED_ARGS:
        return f"unknown builtin model {shown(name)}; available: {', '.join(ALLOWED_ARGS)}"
    return None


def allowed_args(name: str) -> dict[str, str]:
    """Arguments ``builtin:<name>`` accepts (name → description)."""
    return ALLOWED_ARGS[name]


def validate_args(name: str, args: dict[str, Any]) -> list[str]:
    """Problems with argument values (names are checked by the registry)."""
    problems: list[str] = []
    if name == "cnn":
        channels = args.get("channels", [16, 32, 64])
        if not (
            isinstance(channels, (list, tuple))
            and len(channels) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
        ):
            problems.append(f"channels must be three positive integers, got {shown(channels)}")
        problems += int_problems("hidden", args.get("hidden", 64))
    else:
        for key in ("d_model", "n_layer", "n_head"):
            problems += int_problems(key, args.get(key, 1))
        for key in ("d_ff", "max_seq_len"):
            problems += int_problems(key, args.get(key), optional=True)
        if not problems and args.get("d_model", 64) % args.get("n_head", 4):
            problems.append(
                f"n_head ({args.get('n_head', 4)}) must divide d_model ({args.get('d_model', 64)})"
            )
    return problems


def build(name: str, task: TaskInfo, args: dict[str, Any]) -> nn.Module:
    """Build ``builtin:<name>`` for ``task``."""
    if task.kind != TASK_KIND[name]:
        raise ValueError(
            f"model 'builtin:{name}' needs a {TASK_KIND[name]} task, the dataset is {task.kind!r}"
        )
    if name == "cnn":
        if task.input_shape is None:
            raise ValueError("model 'builtin:cnn' needs image inputs (task.input_shape is None)")
        return SmallCNN(
            in_channels=task.input_shape[0],
            num_classes=int(task.num_classes),  # type: ignore[arg-type]
            channels=tuple(args.get("channels", (16, 32, 64))),  # type: ignore[arg-type]
            hidden=int(args.get("hidden", 64)),
        )
    max_seq_len = int(args.get("max_seq_len") or task.seq_len)  # type: ignore[arg-type]
    if max_seq_len < int(task.seq_len):  # type: ignore[arg-type]
        raise ValueError(
            f"model 'builtin:transformer': max_seq_len {max_seq_len} < the task's seq_len {task.seq_len}"
        )
    return TransformerLM(
        vocab_size=int(task.vocab_size),  # type: ignore[arg-type]
        max_seq_len=max_seq_len,
        d_model=int(args.get("d_model", 64)),
        n_layer=int(args.get("n_layer", 2)),
        n_head=int(args.get("n_head", 4)),
        d_ff=args.get("d_ff"),
    )
