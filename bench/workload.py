"""The workload contract (AlgoPerf's sense): a dataset and a model spec, with the loss, the metric,
the metric's direction and the evaluation that go with them.

Everything that trains or measures a model takes these from a `Workload` — the trial loop, the
curvature probe, the probe-overhead profiler, the lr-scan script — so the loss is written once:

    L(z, y) = (1/N) Σ_i −log softmax(z_i)[y_i],   N = y.numel()

over the N loss terms of a batch: one per class label (classification: logits B × C) or one per
next token (language model: logits B × T × V). The mean over terms is the normalisation the
probe's micro-batch weighting assumes (docs/science/quantities.md takes G = ∇_W L of the *mean* loss; see
`bench.probes.curvature.loss_terms`). Logits below float32 (bf16 training) are upcast before the
softmax; float32 and float64 logits keep their dtype, so a float64 probe stays float64.

Evaluation accumulates sums over a split (Σ loss terms, their count, correct predictions), each
rank over a contiguous shard, all-reduced, so the result is the exact full-split value at any
world size. The metric follows from the task's ``metric_name``:

- ``accuracy`` (goal ``max``): correct / count;
- ``perplexity`` (goal ``min``): exp(Σ loss / count), the exponential capped at e⁵⁰ so that a
  diverging model still reports a finite number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bench.batching import fetch, shard_range
from bench.data.task import DataBundle, TaskInfo
from bench.distributed import all_reduce_sum
from optimizers.distributed import rank_and_world

if TYPE_CHECKING:
    from bench.config import WorkloadConfig

Split = Literal["train", "val", "test"]


def _logits(output: torch.Tensor) -> torch.Tensor:
    """Logits as one row per loss term (B × C or B·T × V), at least float32."""
    flat = output.reshape(-1, output.shape[-1])
    return flat if flat.dtype in (torch.float32, torch.float64) else flat.float()


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss L of the module docstring: mean cross-entropy over ``target``'s elements."""
    return F.cross_entropy(_logits(output), target.reshape(-1))


@dataclass(frozen=True)
class EvalSums:
    """Sums over evaluated batches: Σ loss terms, correct predictions (when the metric needs them)
    and the number of loss terms."""

    loss: float = 0.0
    hits: float = 0.0
    count: float = 0.0

    def __add__(self, other: EvalSums) -> EvalSums:
        return EvalSums(self.loss + other.loss, self.hits + other.hits, self.count + other.count)


@dataclass(frozen=True)
class Evaluation:
    """Mean loss and metric on a split (NaN when nothing was evaluated)."""

    loss: float = math.nan
    metric: float = math.nan


@dataclass(frozen=True)
class Metric:
    """A reported metric: its name, whether larger is better, and its value from `EvalSums`."""

    name: str
    goal: Literal["max", "min"]
    value: Callable[[EvalSums], float]
    counts_hits: bool = False  # evaluation must count correct predictions (an argmax per term)

    def improves(self, new: float, best: float) -> bool:
        """Whether ``new`` replaces ``best`` (a NaN ``best`` — none yet — always is replaced)."""
        return math.isnan(best) or (new > best if self.goal == "max" else new < best)


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", "max", lambda s: s.hits / s.count, counts_hits=True),
    "perplexity": Metric("perplexity", "min", lambda s: math.exp(min(s.loss / s.count, 50.0))),
}


@dataclass(frozen=True)
class Workload:
    """A dataset bundle and the model trained on it, with the loss, metric and evaluation.

    Attributes:
        data: the task and its train/val/test splits (`bench.data.load_dataset`).
        model: the model spec (`bench.models.build_model`); empty when only the loss and the
            metric are needed (scripts that build their own model variants).
        model_args: keyword arguments of the model builder.
    """

    data: DataBundle
    model: str = ""
    model_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task.metric_name not in METRICS:
            raise ValueError(f"unknown metric {self.task.metric_name!r}; known: {', '.join(sorted(METRICS))}")

    @classmethod
    def load(cls, config: WorkloadConfig, seed: int) -> Workload:
        """Load ``config``'s dataset, its held-out splits drawn from the trial ``seed``'s data seed
        (identical on every rank and in `specbench probe`)."""
        from bench import data
        from bench.seeds import data_seed

        bundle = data.load_dataset(config.dataset, config.dataset_args, data_seed(seed))
        return cls(bundle, config.model, dict(config.model_args))

    def build_model(self, seed: int) -> nn.Module:
        """The model with the trial ``seed``'s initial weights (the same on every rank)."""
        from bench import models
        from bench.seeds import model_init_seed, seed_everything

        seed_everything(model_init_seed(seed))
        return models.build_model(self.model, self.task, dict(self.model_args))

    @property
    def task(self) -> TaskInfo:
        return self.data.task

    @property
    def metric(self) -> Metric:
        return METRICS[self.task.metric_name]

    @property
    def metric_name(self) -> str:
        return self.metric.name

    @property
    def metric_goal(self) -> str:
        """``"max"`` or ``"min"``: which way the metric improves."""
        return self.metric.goal

    @property
    def tokens_per_sample(self) -> int:
        """Tokens in one training example (language models); 0 for other tasks."""
        return int(self.task.seq_len or 0) if self.task.kind == "lm" else 0

    def split(self, name: Split) -> Dataset:
        return {"train": self.data.train, "val": self.data.val, "test": self.data.test}[name]

    @staticmethod
    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss (mean over loss terms; see the module docstring)."""
        return cross_entropy(output, target)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
        """One plain optimizer step on a batch — forward, loss, backward, ``optimizer.step()`` —
        for scripts and profilers that train a model outside the trial loop (one process, no
        DeepSpeed). Returns the loss (attached to its graph; detach to keep it)."""
        loss = self.loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def eval_sums(self, output: torch.Tensor, target: torch.Tensor) -> EvalSums:
        """One batch's contribution to an evaluation."""
        logits, flat = _logits(output), target.reshape(-1)
        hits = float((logits.argmax(dim=-1) == flat).sum()) if self.metric.counts_hits else 0.0
        return EvalSums(float(F.cross_entropy(logits, flat, reduction="sum")), hits, float(flat.numel()))

    @torch.no_grad()
    def evaluate(self, module: nn.Module, split: Split, batch_size: int, device: torch.device,
                 input_dtype: torch.dtype) -> Evaluation:
        """Mean loss and metric of ``module`` on a split (collective over the process group).

        Each rank evaluates a contiguous shard in batches of ``batch_size``; floating inputs are
        cast to ``input_dtype`` (the engine's precision). The module is in eval mode meanwhile.
        """
        rank, world = rank_and_world()
        dataset = self.split(split)
        was_training = module.training
        module.eval()
        sums = EvalSums()
        shard = shard_range(len(dataset), world, rank)  # type: ignore[arg-type]
        for start in range(shard.start, shard.stop, batch_size):
            x, y = model_batch(dataset, range(start, min(start + batch_size, shard.stop)), device, input_dtype)
            sums = sums + self.eval_sums(module(x), y)
        sums = EvalSums(*all_reduce_sum([sums.loss, sums.hits, sums.count], device))
        module.train(was_training)
        if sums.count == 0:
            return Evaluation()
        return Evaluation(sums.loss / sums.count, self.metric.value(sums))


def model_batch(dataset: Dataset, indices: range | list[int], device: torch.device,
                input_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input, target)`` of ``dataset[indices]`` on ``device``; floating inputs (images) cast to
    ``input_dtype``, integer inputs (token ids) left as they are."""
    x, y = fetch(dataset, list(indices))
    x, y = x.to(device), y.to(device)
    return (x.to(input_dtype) if x.is_floating_point() else x), y
