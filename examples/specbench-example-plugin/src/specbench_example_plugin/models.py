"""A model plug-in: ``factory(task, **model_args) -> torch.nn.Module``.

The suite passes the task (``bench.data.TaskInfo``: its kind, ``input_shape``, ``num_classes``)
and the config's ``model_args``; their names, types, bounds and defaults come from this signature
(``Annotated[..., Field(...)]`` adds bounds and the descriptions ``specbench list models`` shows).
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field
from torch import nn

from bench.data import TaskInfo


def mlp(
    task: TaskInfo,
    hidden: Annotated[int, Field(ge=1, description="width of each hidden layer")] = 64,
    depth: Annotated[int, Field(ge=1, le=8, description="number of hidden layers")] = 2,
) -> nn.Module:
    """A ReLU MLP on flattened images: depth × (linear, ReLU), then a linear head."""
    if task.kind != "classification" or task.input_shape is None:
        raise ValueError(f"mlp needs an image classification task, got {task.kind!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(task.input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, task.num_classes))
    return nn.Sequential(*layers)
