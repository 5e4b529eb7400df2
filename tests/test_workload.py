"""The workload contract (bench.workload): loss, evaluation sums, metric and its direction against
float64 oracles written here; a trial whose set-up fails records it and raises a permanent error."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_sweep
from torch import nn
from torch.utils.data import TensorDataset

from bench.data.task import DataBundle, TaskInfo
from bench.errors import PermanentTrialError
from bench.workload import METRICS, EvalSums, Workload, cross_entropy


def _oracle_sums(logits: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """(Σ −log softmax(z)[y], correct argmax count, terms) in float64, one term per target entry."""
    z = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    y = target.reshape(-1)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum()), float((z.argmax(axis=1) == y).sum()), float(len(y))


def _bundle(task: TaskInfo, n: int = 10) -> DataBundle:
    gen = torch.Generator().manual_seed(0)
    if task.kind == "lm":
        ids = torch.randint(0, task.vocab_size, (n, task.seq_len + 1), generator=gen)
        split = TensorDataset(ids[:, :-1], ids[:, 1:])
    else:
        split = TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, task.num_classes, (n,), generator=gen))
    return DataBundle(task, split, split, split)


CLASSIFY = TaskInfo(kind="classification", num_classes=5)
LM = TaskInfo(kind="lm", vocab_size=7, seq_len=4)


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 7)], ids=["classification", "lm"])
def test_loss_is_the_mean_cross_entropy_over_target_entries(shape):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64)
    target = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    total, _, terms = _oracle_sums(logits.numpy(), target.numpy())
    loss = cross_entropy(logits, target)
    assert loss.dtype == torch.float64  # a float64 probe stays float64
    assert float(loss) == pytest.approx(total / terms, rel=1e-12)
    # bf16 logits (bf16 training) are upcast before the softmax.
    assert cross_entropy(logits.bfloat16(), target).dtype == torch.float32


def test_eval_sums_and_metrics_match_the_oracle():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 5, (8,), generator=gen)
    total, hits, terms = _oracle_sums(logits.numpy(), target.numpy())
    sums = Workload(_bundle(CLASSIFY)).eval_sums(logits, target)
    assert (sums.loss, sums.hits, sums.count) == (pytest.approx(total, rel=1e-12), hits, terms)
    assert METRICS["accuracy"].value(sums) == hits / terms

    lm = Workload(_bundle(LM))
    tokens = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)
    next_ids = torch.randint(0, 7, (2, 4), generator=gen)
    total, _, terms = _oracle_sums(tokens.numpy(), next_ids.numpy())
    sums = lm.eval_sums(tokens, next_ids)
    assert sums.hits == 0.0 and sums.count == 8  # perplexity needs no argmax
    assert lm.metric.value(sums) == pytest.approx(math.exp(total / terms), rel=1e-12)
    assert lm.metric.value(EvalSums(loss=1e6, count=1.0)) == math.exp(50.0)  # capped, finite


def test_metric_direction_and_task_facts():
    vision, lm = Workload(_bundle(CLASSIFY)), Workload(_bundle(LM))
    assert (vision.metric_name, vision.metric_goal, vision.tokens_per_sample) == ("accuracy", "max", 0)
    assert (lm.metric_name, lm.metric_goal, lm.tokens_per_sample) == ("perplexity", "min", 4)
    assert vision.metric.improves(0.5, math.nan) and vision.metric.improves(0.6, 0.5)
    assert not vision.metric.improves(0.4, 0.5)
    assert lm.metric.improves(10.0, 12.0) and not lm.metric.improves(13.0, 12.0)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        Workload(_bundle(TaskInfo(kind="classification", num_classes=2, metric_name="f1")))


def test_evaluate_covers_the_split_in_uneven_batches():
    torch.manual_seed(0)
    model = nn.Linear(6, 5).double()
    model.train()
    workload = Workload(_bundle(CLASSIFY, n=11))
    x, y = workload.data.val.tensors
    with torch.no_grad():
        total, hits, terms = _oracle_sums(model(x.double()).numpy(), y.numpy())
    got = workload.evaluate(model, "val", batch_size=4, device=torch.device("cpu"), input_dtype=torch.float64)
    assert got.loss == pytest.approx(total / terms, rel=1e-12)
    assert got.metric == hits / terms
    assert model.training  # the module's mode is restored


def test_train_step_lowers_the_loss_of_its_batch():
    torch.manual_seed(0)
    model = nn.Linear(6, 5)
    workload = Workload(_bundle(CLASSIFY))
    x, y = workload.data.train.tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = float(workload.train_step(model, opt, x, y).detach())
    with torch.no_grad():
        assert float(workload.loss(model(x), y)) < first


@pytest.mark.parametrize(
    ("change", "cause", "goal"),
    [
        ({"dataset": "missing.parquet"}, "ValueError: dataset 'missing.parquet'", ""),
        ({"model": "builtin:transformer"}, "ValueError: model 'builtin:transformer' needs a lm task", "max"),
    ],
    ids=["data", "model"],
)
def test_setup_failure_writes_the_failed_row_then_raises_permanent(tmp_path, change, cause, goal):
    """The launcher must not retry these (they fail the same way every time), and the runs row
    names the cause. No process group or DeepSpeed is needed to fail before the engine exists."""
    from bench.trial import run_trial
    from launchers.sweep import expand, parse_config

    (spec,) = expand(parse_config(tiny_sweep()))
    spec = spec.model_copy(update={"workload": spec.workload.model_copy(update=change)})
    with pytest.raises(PermanentTrialError) as err:
        run_trial(spec, tmp_path)
    assert cause in str(err.value)
    run = pq.read_table(tmp_path / spec.sweep_name / "trials" / spec.trial_id / "runs.parquet").to_pylist()[0]
    assert run["status"] == "failed" and run["error"].startswith(cause)
    assert run["steps_completed"] == 0
    assert run["metric_goal"] == goal  # unknown until the data says what the task is
