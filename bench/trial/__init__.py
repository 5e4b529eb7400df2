"""One trial: the training loop every worker runs (AlgoPerf's "runner" role).

The loop owns timing, evaluation scheduling and logging; the workload (`bench.workload`: data,
model, loss, metric, evaluation) and the optimizer are plugged in through the registries. It needs
an initialised ``torch.distributed`` process group (Ray Train's, or one made by ``specbench
train``) and nothing from Ray, so a trial runs the same way inside a sweep, from the command line,
and in the tests.

Per optimizer step ``t`` (1-based in the results):

1. every rank runs ``grad_accum`` micro-batches of its shard of the global batch through
   ``engine.forward``/``engine.backward`` (DeepSpeed all-reduces gradients at the boundary);
2. ``engine.step()`` applies gradient clipping, the client optimizer and the lr schedule;
3. the step's loss (mean over ranks and micro-batches) is all-reduced and checked for divergence.

Rank 0 writes the ``steps`` table at every evaluation (so a crash loses at most one evaluation
interval) and the ``runs`` row at the end, always atomically.

Modules, one phase or concept each:

- `loop` — `run_trial` and the phases: train step, log row, evaluate, checkpoint, finish;
- `setup` — the set-up `Trial` (workload, model, optimizer, engine, sampler, probe, resume);
- `state` — `TrialState` (what the ``runs`` row reports) and `Interval` (a log interval's sums);
- `rows` — the ``steps`` and ``runs`` rows, `TableLog`, `record_failure`;
- `probing` — `Prober`, the curvature probe at scheduled steps.
"""

from bench.trial.loop import Reporter, run_trial
from bench.trial.rows import record_failure
from bench.trial.state import Diverged, TrialOutcome, TrialState

__all__ = ["Diverged", "Reporter", "TrialOutcome", "TrialState", "record_failure", "run_trial"]
