"""The training loop as named phases: set up, train step, log row, evaluate, checkpoint, finish.

`run_trial` is the whole trial; each phase below is one function over the set-up `Trial` and the
`TrialState` the ``runs`` row is written from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import checkpoint
from bench.config import TrialSpec
from bench.data.cache import TokenCache
from bench.distributed import all_reduce_sum
from bench.probes.online import OnlineCapture
from bench.results import remote, writer
from bench.timing import timed
from bench.trial.rows import TableLog, steps_row, write_run_row
from bench.trial.setup import Trial, setup, trial_device
from bench.trial.state import Diverged, Interval, TrialOutcome, TrialState
from bench.workload import Evaluation, Split
from optimizers.distributed import rank_and_world
from optimizers.timing import synchronize

Reporter = Callable[[dict[str, Any]], None]


def run_trial(spec: TrialSpec, storage: str | os.PathLike, reporter: Reporter | None = None) -> TrialOutcome:
    """Train one trial on the current process group and write its results (rank 0).

    ``reporter`` is called on every rank with a small progress dict every ``report_every`` steps
    and at the end (inside Ray it forwards to ``ray.train.report``, which all ranks must call the
    same number of times). A failure is recorded in the ``runs`` row, then raised again (a set-up
    failure as `bench.errors.PermanentTrialError`); a diverged trial is a result, not a failure.
    """
    rank, world = rank_and_world()
    device = trial_device(spec)
    remote.activate(storage)  # an object-store storage: uploads follow every write from here on
    out_dir = writer.trial_dir(storage, spec.sweep_name, spec.trial_id)
    state = TrialState()
    steps = TableLog("steps", out_dir / "steps.parquet", write=rank == 0)
    try:
        cache = TokenCache.of_trial(storage, spec.training.input)
        trial = setup(spec, out_dir, device, rank, world, state, steps, cache)
        train(trial, state, reporter)
        finish(trial, state)
    except Diverged as exc:
        state.status, state.error = "diverged", str(exc)
    except Exception as exc:
        state.fail(exc)
        if rank == 0:
            steps.flush()
            write_run_row(spec, out_dir, state, world)
        raise  # so that the launcher marks the trial as errored
    synchronize(device)
    if rank == 0:
        steps.flush()
        write_run_row(spec, out_dir, state, world)
        if not spec.training.keep_checkpoint:
            checkpoint.remove(out_dir)
    if reporter is not None:
        reporter({"step": state.step, "steps": spec.training.steps, "train_loss": state.train_loss,
                  "status": state.status, "done": True})
    return TrialOutcome(spec.trial_id, state.status, state.step, {"train_loss": state.train_loss})


def train(trial: Trial, state: TrialState, reporter: Reporter | None) -> None:
    """Optimizer steps from the resume point to the last, with their rows, evaluations, probes,
    checkpoints and progress reports. Raises `Diverged` at a diverging step."""
    tcfg = trial.spec.training
    last = tcfg.steps
    every = tcfg.report_every if tcfg.report_every > 0 else max(1, last // 5)
    interval = Interval()
    trial.engine.train()
    try:
        for step in range(trial.start_step + 1, last + 1):
            # Mode online reads the probe's statistics off this step's own passes (bench.trial.probing).
            capture = trial.prober.arm(trial.engine, step, last) if trial.prober is not None else None
            record_step(trial, state, interval, step, train_step(trial, step, capture))
            if trial.prober is not None and trial.spec.probes.due(step, last):
                # A collective outside the step timer: probe time is never billed as step time.
                interval.probe_seconds += trial.prober.probe(trial.engine, trial.optimizer, step)
            done = step == last
            evaluate_now = step % tcfg.eval_every == 0 or done
            if step % tcfg.log_every == 0 or evaluate_now:
                log_row(trial, state, interval, step, evaluate_now)
                interval = Interval()
            if tcfg.checkpoint_every > 0 and step % tcfg.checkpoint_every == 0 and not done:
                save_checkpoint(trial, state, step)
            if reporter is not None and step % every == 0 and not done:
                reporter({"step": step, "steps": last, "train_loss": state.train_loss})
    finally:
        trial.input.close()  # background loaders stop with the last step (or a failure)


@dataclass(frozen=True)
class StepResult:
    """One optimizer step: its loss (mean over ranks and micro-batches), whether any rank saw a
    non-finite loss, and its phase seconds (the ``PHASE_COLUMNS`` of `bench.trial.state`)."""

    loss: float
    nonfinite: bool
    seconds: dict[str, float]


def train_step(trial: Trial, step: int, capture: OnlineCapture | None = None) -> StepResult:
    """Optimizer step ``step`` (1-based): ``grad_accum`` micro-batches of forward and backward
    (DeepSpeed all-reduces the gradients at the accumulation boundary), then ``engine.step()``
    (clipping, the client optimizer, the lr schedule), then the loss summed over ranks. An online
    probe ``capture`` is shown each micro-batch's loss before its backward."""
    engine, device, accum = trial.engine, trial.device, trial.spec.training.grad_accum
    phases: dict[str, float] = {}
    loss_sum = 0.0
    with timed(device, phases, "step"):
        for micro in range(accum):
            with timed(device, phases, "data"):  # the wait for input: what prefetching leaves
                x, y = trial.micro_batch(step, micro)
            with timed(device, phases, "fwd_bwd"):
                loss = trial.workload.loss(engine(x), y)
                if capture is not None:
                    capture.watch(loss, y)
                engine.backward(loss)
            loss_sum += float(loss.detach())
        with timed(device, phases, "opt"):
            engine.step()
        # The gradient all-reduce runs inside engine.backward at the accumulation boundary: it
        # is inside the fwd_bwd time, so it is subtracted there to keep the phases disjoint.
        comm = trial.allreduce_timer.pop()
        total, nonfinite = all_reduce_sum([loss_sum / accum, 0.0 if math.isfinite(loss_sum) else 1.0], device)
    seconds = {"step_time_s": phases["step"], "fwd_bwd_time_s": phases["fwd_bwd"] - comm,
               "optimizer_time_s": phases["opt"], "comm_time_s": comm, "data_time_s": phases["data"]}
    return StepResult(total / trial.world, nonfinite > 0, seconds)


def record_step(trial: Trial, state: TrialState, interval: Interval, step: int, result: StepResult) -> None:
    """Count the step (its time and the optimizer's metrics), then stop a diverging trial before
    its loss becomes the trial's result."""
    state.step = step
    state.step_times.append(result.seconds["step_time_s"])
    metrics = getattr(trial.optimizer, "step_metrics", None)
    interval.add_step(result.seconds, metrics() if callable(metrics) else {})
    limit = trial.spec.training.divergence_loss
    if result.nonfinite or not math.isfinite(result.loss) or result.loss > limit:
        raise Diverged(f"training loss {result.loss:.4g} at step {step}")
    state.train_loss = result.loss


def log_row(trial: Trial, state: TrialState, interval: Interval, step: int, evaluate_now: bool) -> None:
    """Append a ``steps`` row for the interval ending at ``step``; with an evaluation, evaluate
    on the validation split and write the table (a crash loses at most one evaluation interval)."""
    lr = float(trial.optimizer.param_groups[0]["lr"])
    row = steps_row(trial.spec.trial_id, step, trial.sampler.global_batch, state, interval, lr, trial.world)
    if evaluate_now:
        evaluation = evaluate(trial, "val")
        row["eval_loss"], row["eval_metric"] = evaluation.loss, evaluation.metric
        state.record_eval(evaluation, step, trial.workload.metric)
    trial.steps.extend([row])
    if evaluate_now:
        trial.steps.flush()


def evaluate(trial: Trial, split: Split) -> Evaluation:
    """The workload's evaluation of the engine's model on a split (a collective)."""
    return trial.workload.evaluate(trial.engine.module, split, trial.spec.training.eval_batch_size, trial.device,
                                   trial.input_dtype)


def save_checkpoint(trial: Trial, state: TrialState, step: int) -> None:
    """A checkpoint after optimizer step ``step`` (a collective). The rows up to this step are on
    disk first, so that a trial resumed from it has no gap and no duplicate (bench.checkpoint)."""
    trial.steps.flush()
    checkpoint.save(trial.engine, trial.out_dir, step, state.client_state())


def finish(trial: Trial, state: TrialState) -> None:
    """After the last step: keep the final weights if asked, evaluate on the test split."""
    tcfg = trial.spec.training
    if tcfg.keep_checkpoint and tcfg.checkpoint_every > 0:
        # The final weights, for `specbench probe --checkpoint` and later analysis.
        checkpoint.save(trial.engine, trial.out_dir, tcfg.steps, state.client_state())
    state.test = evaluate(trial, "test")
    state.status = "completed"
    if trial.prober is not None:
        state.probe_unsupported = trial.prober.unsupported
