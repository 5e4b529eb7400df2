"""The suite's optimizers under a DeepSpeed engine: the one module that touches DeepSpeed internals.

:func:`initialize` is ``deepspeed.initialize`` for a client optimizer of this package, with two
things DeepSpeed does not do by itself:

1. **Exactly one optimizer step per training step.** With ``bf16`` at ZeRO-0 DeepSpeed wraps the
   client in ``FP16_UnfusedOptimizer``, whose constructor runs one client ``step()`` on zero
   gradients to create the optimizer state (``initialize_optimizer_states``). That step advances
   every step counter and bias correction and applies one round of weight decay before training
   starts. Every client ``step()`` issued while ``deepspeed.initialize`` runs is therefore ignored
   (counted in ``optimizer.ignored_construction_steps``); the state is created lazily at the first
   real step, as in fp32. The public extension point here is the client optimizer itself.
2. **Whole matrices under ZeRO 1, 2 and 3.** DeepSpeed hands a client optimizer one flat fp32
   partition per param group and rank. For a :class:`optimizers.MatrixOptimizer` this module reads
   where every matrix's pieces lie in those partitions (:func:`read_fragments`) and attaches the
   owner exchange (:class:`optimizers.zero_partitions.ZeroPartitions`) to the optimizer, which then
   updates each matrix whole on its owner rank, inside DeepSpeed's own step (after its reduction,
   averaging and clipping, before its all-gather).

DeepSpeed has no public API for the partition layout, so :func:`read_fragments` reads internals,
all of them here and nowhere else: at ZeRO-1/2 the ``_hp_mapping`` fragment addresses DeepSpeed
attaches to each parameter (``lp_fragment_address``: the piece's start and length in the
flattened parameter; ``hp_fragment_address``: its start in the flat partition), and the optimizer's
``bit16_groups`` / ``single_partition_of_fp32_groups``; at ZeRO-3 the optimizer's ``fp16_groups``,
``sub_group_to_group_id``, ``grad_position``, ``fp32_partitioned_groups_flat`` and each
parameter's ``ds_tensor`` (rank r holds elements [r·n, r·n + n) of the flattened parameter, n its
partition size). It also relies on DeepSpeed calling the client ``step()`` once per param group
(ZeRO-1/2) or sub-group (ZeRO-3) per training step, so ZeRO-3 gets one sub-group per param group
(``sub_group_size``, :func:`zero_config`). These were read from DeepSpeed 0.19.8 and are checked
against its source in the tests; :data:`TESTED_DEEPSPEED` is the range the suite accepts: outside
it, ZeRO ≥ 1 with a matrix optimizer fails at config validation and here, with the versions named.
A layout this module misreads fails loudly too: the pieces must tile every matrix exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import torch
import torch.distributed as dist

from .matrix_base import MatrixOptimizer
from .zero_partitions import Fragment, ZeroPartitions

TESTED_DEEPSPEED: tuple[str, str] = ("0.19.8", "0.20")
"""[lowest, first untested) DeepSpeed versions whose partition layout :func:`read_fragments` reads."""
ONE_SUB_GROUP = 1 << 62
"""ZeRO-3 ``sub_group_size`` that keeps every param group in one sub-group (one client step each)."""

log = logging.getLogger(__name__)


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def deepspeed_version_problem(version: str | None = None) -> str | None:
    """Why the installed DeepSpeed (or ``version``) cannot run matrix optimizers at ZeRO ≥ 1, or None."""
    if version is None:
        try:
            version = metadata.version("deepspeed")
        except metadata.PackageNotFoundError:
            return "DeepSpeed is not installed"
    low, high = TESTED_DEEPSPEED
    if not _release(low) <= _release(version) < _release(high):
        return (
            f"matrix optimizers at ZeRO ≥ 1 read DeepSpeed's partition layout, tested on DeepSpeed ≥ {low}, < {high}; "
            f"this is DeepSpeed {version}"
        )
    return None


def zero_stage_problems(optimizer_name: str, settings: Mapping[str, Any], stage: int) -> list[str]:
    """Why ``optimizer_name`` with ``settings`` cannot train at ZeRO ``stage`` (empty: it can).

    Every registered optimizer runs at every stage except, at ZeRO ≥ 1: an optimizer needing whole
    matrices that is not a :class:`MatrixOptimizer` (a plug-in: only the frame reads the partition
    layout); a matrix optimizer with ``distribution: redundant`` (every rank would need every whole
    gradient, which the partitions do not hold) or with a DeepSpeed outside :data:`TESTED_DEEPSPEED`
    (the layout is read from its internals)."""
    from .registry import builds_matrix_frame, requires_full_matrices

    if stage == 0 or not requires_full_matrices(optimizer_name):
        return []
    if not builds_matrix_frame(optimizer_name):
        return [
            f"needs whole gradient matrices, but training.zero_stage={stage} hands client optimizers one flat 1-D "
            "partition per rank, and only an optimizers.MatrixOptimizer subclass is given its matrices whole "
            "there; use zero_stage: 0 or build it on optimizers.MatrixOptimizer"
        ]
    problems = []
    if settings.get("distribution") == "redundant":
        problems.append(
            f"distribution 'redundant' computes every matrix on every rank from whole gradients, which the "
            f"partitions of training.zero_stage={stage} do not hold; use distribution: sharded (the default) or "
            "zero_stage: 0"
        )
    version = deepspeed_version_problem()
    if version:
        problems.append(f"training.zero_stage={stage}: {version}; use zero_stage: 0 or that DeepSpeed")
    return problems


def zero_config(optimizer_name: str, stage: int) -> dict[str, Any]:
    """DeepSpeed config entries the optimizer ``optimizer_name`` needs at ZeRO ``stage`` (merged into
    ``zero_optimization`` except ``zero_allow_untested_optimizer``)."""
    from .registry import requires_full_matrices

    if stage == 0:
        return {}
    if optimizer_name == "muon_deepspeed":
        # DeepSpeed's own Muon refuses ZeRO-3's reduce-scatter (stage3.py: "Muon and reduce scatter
        # cannot be used together").
        return {"zero_optimization": {"reduce_scatter": False}} if stage == 3 else {}
    if requires_full_matrices(optimizer_name):  # a MatrixOptimizer (zero_stage_problems refuses the rest)
        return {
            "zero_allow_untested_optimizer": True,  # DeepSpeed's allow-list names only its own optimizers
            "zero_optimization": {"sub_group_size": ONE_SUB_GROUP, "elastic_checkpoint": False},
        }
    return {}


# --- the partition layout (DeepSpeed internals) ---------------------------------------------


def _zero_optimizer(engine: Any) -> Any:
    stage = engine.zero_optimization_stage()
    zo = engine.optimizer
    expected = "DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer"
    if type(zo).__name__ != expected:
        raise RuntimeError(f"ZeRO stage {stage}: expected DeepSpeed's {expected}, found {type(zo).__name__}")
    return zo


def _require(obj: Any, *names: str) -> None:
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise RuntimeError(
            f"DeepSpeed's {type(obj).__name__} lacks {', '.join(missing)}: its partition layout changed "
            f"(read for DeepSpeed ≥ {TESTED_DEEPSPEED[0]}, < {TESTED_DEEPSPEED[1]})"
        )


def read_fragments(engine: Any, params: Sequence[torch.Tensor]) -> tuple[list[Fragment], torch.Tensor, Any]:
    """This rank's pieces of ``params`` (model parameters of one client param group, by position)
    in the engine's flat fp32 partition of that group; returns ``(fragments, partition, dp_group)``."""
    stage = engine.zero_optimization_stage()
    if stage not in (1, 2, 3):
        raise ValueError(f"no flat partitions at ZeRO stage {stage}")
    zo = _zero_optimizer(engine)
    ids = {id(p): i for i, p in enumerate(params)}
    if stage == 3:
        return _read_stage3(zo, params, ids)
    _require(zo, "bit16_groups", "single_partition_of_fp32_groups", "real_dp_process_group")
    groups = [gi for gi, g in enumerate(zo.bit16_groups) if any(id(p) in ids for p in g)]
    if len(groups) != 1 or {id(p) for p in zo.bit16_groups[groups[0]]} != set(ids):
        raise RuntimeError("the matrices are not exactly one of DeepSpeed's ZeRO-1/2 param groups")
    gi = groups[0]
    fragments = []
    for i, p in enumerate(params):
        if not hasattr(p, "_hp_mapping"):
            raise RuntimeError("DeepSpeed did not attach _hp_mapping to the parameters: its ZeRO-1/2 layout changed")
        mapping = p._hp_mapping
        if mapping is None:  # no piece of this matrix on this rank
            continue
        lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
        if lp.numel != hp.numel:
            raise RuntimeError(f"DeepSpeed fragment of matrix {i}: {lp} vs {hp}")
        fragments.append(Fragment(i, int(lp.start), int(hp.start), int(lp.numel)))
    return fragments, zo.single_partition_of_fp32_groups[gi], zo.real_dp_process_group[gi]


def _read_stage3(zo: Any, params: Sequence[torch.Tensor], ids: dict[int, int]) -> tuple[list[Fragment], torch.Tensor, Any]:
    _require(zo, "fp16_groups", "sub_group_to_group_id", "grad_position", "get_param_id",
             "fp32_partitioned_groups_flat", "dp_process_group")
    subs = [s for s, g in enumerate(zo.fp16_groups) if any(id(p) in ids for p in g)]
    if len(subs) != 1 or {id(p) for p in zo.fp16_groups[subs[0]]} != set(ids):
        raise RuntimeError(
            f"ZeRO-3 split the matrix group into {len(subs)} sub-groups: DeepSpeed would step the optimizer once "
            f"per sub-group; set zero_optimization.sub_group_size ≥ the group's size (optimizers.deepspeed_zero.zero_config)"
        )
    sub = subs[0]
    group_id = zo.sub_group_to_group_id[sub]
    if sum(1 for s, g in zo.sub_group_to_group_id.items() if g == group_id) != 1:
        raise RuntimeError("ZeRO-3 param group of the matrices spans several sub-groups")
    rank = dist.get_rank(zo.dp_process_group)
    fragments = []
    for i, p in enumerate(params):
        position_sub, offset, size = zo.grad_position[zo.get_param_id(p)]
        if position_sub != sub or int(p.ds_tensor.ds_numel) != size:
            raise RuntimeError(f"ZeRO-3 position of matrix {i} disagrees with its partition: {zo.grad_position[zo.get_param_id(p)]}")
        start = rank * size
        numel = min(size, int(p.ds_numel) - start)  # the last ranks' pieces end in padding
        if numel > 0:
            fragments.append(Fragment(i, start, int(offset), numel))
    return fragments, zo.fp32_partitioned_groups_flat[sub], zo.dp_process_group


def attach(engine: Any, optimizer: MatrixOptimizer) -> None:
    """Attach the owner exchange for ``optimizer``'s matrices to it (a collective; ZeRO ≥ 1)."""
    problem = deepspeed_version_problem()
    if problem:
        raise RuntimeError(problem)
    fragments, partition, group = read_fragments(engine, optimizer.matrix_sources)
    (matrix_group,) = optimizer.matrix_groups()
    if matrix_group["params"] and matrix_group["params"][0] is not partition:
        raise RuntimeError("the optimizer's matrix group does not hold DeepSpeed's flat partition of it")
    sharding = optimizer.sharding
    sharding.setup()
    if dist.get_world_size(group) != sharding.world:
        raise RuntimeError("DeepSpeed's data-parallel group is not the whole world: not supported with matrix optimizers")
    optimizer.attach_zero(ZeroPartitions(fragments, sharding.shapes, sharding.owners, group))


# --- engine creation --------------------------------------------------------------------------


@contextmanager
def _steps_ignored(optimizer: torch.optim.Optimizer) -> Iterator[list[int]]:
    """Within the block, ``optimizer.step()`` does nothing and is counted (an instance attribute
    shadows the method; an existing one, e.g. an LR scheduler's wrapper, is restored after)."""
    calls = [0]
    previous = vars(optimizer).get("step")

    def ignored(closure: Callable[[], Any] | None = None) -> None:
        calls[0] += 1

    optimizer.step = ignored  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        if previous is None:
            del optimizer.step
        else:
            optimizer.step = previous  # type: ignore[method-assign]


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any],
               lr_scheduler: Any = None) -> Any:
    """``deepspeed.initialize`` on the current process group for one of this package's optimizers
    (module docstring): construction-time client steps ignored, whole-matrix updates attached
    under ZeRO ≥ 1. Returns the engine."""
    import deepspeed  # imported late: it inspects the accelerator at import time

    if isinstance(optimizer, MatrixOptimizer) and any(getattr(p, "use_muon", False) for p in model.parameters()):
        # DeepSpeed's ZeRO-1/2 code would orthogonalise these gradients itself before this optimizer
        # sees them (it recognises any client whose class name contains "muon").
        raise ValueError("the model's parameters carry DeepSpeed's use_muon flag (set for muon_deepspeed); "
                         f"build a fresh model for {type(optimizer).__name__}")
    with _steps_ignored(optimizer) as calls:
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                               config=config, dist_init_required=False)
    optimizer.ignored_construction_steps = calls[0]  # type: ignore[attr-defined]
    if calls[0]:
        log.info("ignored %d optimizer step(s) DeepSpeed ran while building %s", calls[0], type(engine.optimizer).__name__)
    if isinstance(optimizer, MatrixOptimizer) and engine.zero_optimization_stage() >= 1:
        attach(engine, optimizer)
    return engine


# --- accounting (for the memory benchmark) -----------------------------------------------------


def master_partitions(engine: Any) -> list[torch.Tensor]:
    """This rank's fp32 master partitions held by DeepSpeed's ZeRO optimizer (empty at ZeRO-0,
    where the client's parameters are the masters or the model's own)."""
    stage = engine.zero_optimization_stage()
    if stage == 0:
        return []
    zo = _zero_optimizer(engine)
    name = "fp32_partitioned_groups_flat" if stage == 3 else "single_partition_of_fp32_groups"
    _require(zo, name)
    return list(getattr(zo, name))
