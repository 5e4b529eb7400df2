"""Setting a trial up: workload, model, optimizer, DeepSpeed engine, probe, resume point.

The data and the model are built identically on every rank (same seeds); DeepSpeed also
broadcasts rank 0's weights, so the replicas start equal either way. A failure while loading the
data or building the model, the optimizer or the engine would repeat on every attempt, so it is
raised as `bench.errors.PermanentTrialError` (the launcher does not retry it); a failure of the
process group itself (a peer died) stays what it is, and a retry may well succeed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

import optimizers
from bench import checkpoint
from bench.batching import GlobalBatchSampler
from bench.config import TrialSpec
from bench.data.cache import TokenCache
from bench.data.loader import InputPipeline
from bench.deepspeed_config import deepspeed_config, lr_lambda
from bench.errors import PermanentTrialError
from bench.seeds import data_seed, derive_seed, rank_seed, seed_everything
from bench.throughput import count_train_flops, device_peak
from bench.timing import CallTimer
from bench.trial.probing import Prober
from bench.trial.rows import TableLog
from bench.trial.state import TrialState
from bench.workload import Workload, model_batch
from optimizers import deepspeed_zero

T = TypeVar("T")


@dataclass
class Trial:
    """A trial that is set up: what the loop's phases work with."""

    spec: TrialSpec
    out_dir: Path
    rank: int
    world: int
    device: torch.device
    workload: Workload
    engine: Any  # deepspeed.DeepSpeedEngine
    optimizer: torch.optim.Optimizer  # the client optimizer (lr, step_metrics, measured α)
    sampler: GlobalBatchSampler
    input: InputPipeline  # the sampler's micro-batches, fetched in the loop or by background workers
    allreduce_timer: CallTimer
    input_dtype: torch.dtype  # floating inputs follow the engine's precision
    steps: TableLog
    prober: Prober | None
    start_step: int = 0  # optimizer steps already done (a resumed trial's checkpoint step)

    def micro_batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's micro-batch ``micro`` of optimizer step ``step`` (1-based), on the device."""
        return self.input.batch(step, micro)


def trial_device(spec: TrialSpec) -> torch.device:
    if spec.resources.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _permanent(stage: str, build: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``build(*args, **kwargs)``, a failure of which is permanent (see the module docstring)."""
    try:
        return build(*args, **kwargs)
    except dist.DistError:
        raise
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
        raise PermanentTrialError(f"{stage} failed: {cause}", cause) from exc


def setup(spec: TrialSpec, out_dir: Path, device: torch.device, rank: int, world: int, state: TrialState,
          steps: TableLog, cache: TokenCache | None = None) -> Trial:
    """Build everything a trial needs, recording what the ``runs`` row reports in ``state``, and
    restore the newest checkpoint (if any) into the engine, ``state`` and the tables. A text
    corpus is read through the token ``cache`` when one is given."""
    workload = _permanent("loading the dataset", Workload.load, spec.workload, spec.seed, cache)
    state.workload = workload
    model = _permanent("building the model", workload.build_model, spec.seed)
    _measure_model(spec, workload, model, device, state)
    seed_everything(rank_seed(spec.seed, rank))
    optimizer = _permanent("building the optimizer", optimizers.build, spec.optimizer, model,
                           **spec.optimizer_settings)
    engine = _permanent("deepspeed.initialize", _engine, spec, model, optimizer, world)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.pull(out_dir)  # results and checkpoint of an earlier attempt, possibly on another node
    checkpoint.write_pid(out_dir, rank)
    prober = Prober(spec, workload, device, out_dir, rank == 0) if spec.probes.enabled else None
    if prober is not None:
        state.measured_alpha = prober.alpha_log  # the same list: every probe's α is in the runs row
    sampler = _sampler(spec, workload, rank, world)
    input_dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    trial = Trial(
        spec=spec, out_dir=out_dir, rank=rank, world=world, device=device, workload=workload, engine=engine,
        optimizer=optimizer, sampler=sampler, input=_input(spec, workload, sampler, device, input_dtype, rank),
        allreduce_timer=CallTimer(engine, "allreduce_gradients", device),
        input_dtype=input_dtype, steps=steps, prober=prober,
    )
    if spec.training.checkpoint_every > 0:
        _resume(trial, state)
    return trial


def _measure_model(spec: TrialSpec, workload: Workload, model: nn.Module, device: torch.device,
                   state: TrialState) -> None:
    """Parameters, model FLOPs per sample and the device's peak (the MFU denominator)."""
    state.num_parameters = sum(p.numel() for p in model.parameters())
    # Counted before DeepSpeed takes the model (and before the rank seeds), on one sample, on
    # the trial's device (where DeepSpeed would move the model anyway): milliseconds on a
    # GPU even for a 1B model. A meta-device count would be free but transformers' masks
    # read tensor values, which meta tensors do not have.
    model.to(device)
    x1, y1 = model_batch(workload.split("train"), [0], device, torch.float32)
    state.flops_per_sample = count_train_flops(model, x1, lambda out: workload.loss(out, y1))
    state.peak = device_peak(device, spec.training.precision, spec.resources.peak_tflops)


def _engine(spec: TrialSpec, model: nn.Module, optimizer: torch.optim.Optimizer, world: int):
    """The DeepSpeed engine, created by `optimizers.deepspeed_zero.initialize`: the optimizer steps
    exactly once per training step (also in bf16) and matrix optimizers update whole matrices
    at every ZeRO stage."""
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec.training))
    return deepspeed_zero.initialize(model, optimizer, deepspeed_config(spec.training, world, spec.optimizer),
                                     scheduler)


def _sampler(spec: TrialSpec, workload: Workload, rank: int, world: int) -> GlobalBatchSampler:
    tcfg = spec.training
    return GlobalBatchSampler(
        num_samples=len(workload.split("train")), seed=data_seed(spec.seed), micro_batch=tcfg.micro_batch_size,
        grad_accum=tcfg.grad_accum, world_size=world, rank=rank,
    )


def _input(spec: TrialSpec, workload: Workload, sampler: GlobalBatchSampler, device: torch.device,
           input_dtype: torch.dtype, rank: int) -> InputPipeline:
    settings = spec.training.input
    return InputPipeline(workload.split("train"), sampler, spec.training.steps, device, input_dtype,
                         workers=settings.loader_workers, prefetch=settings.prefetch_batches,
                         seed=derive_seed(rank_seed(spec.seed, rank), "loader"))


def _resume(trial: Trial, state: TrialState) -> None:
    """Continue from the newest checkpoint, if there is one: engine (model, optimizer, lr
    schedule), the state the ``runs`` row needs, and the table rows up to its step."""
    client_state = checkpoint.load(trial.engine, trial.out_dir)
    if client_state is None:
        return
    step = int(client_state["step"])
    trial.start_step = step
    state.restore(client_state, step)
    trial.steps.resume(step)
    if trial.prober is not None:
        trial.prober.resume(step)
    # Per-rank randomness continues from a seed tied to the resume point.
    seed_everything(derive_seed(rank_seed(trial.spec.seed, trial.rank), "resume", step))
