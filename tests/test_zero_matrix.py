"""Matrix optimizers on ZeRO stages 1–3 (optimizers.deepspeed_zero, optimizers.zero_partitions) and
bf16 that steps exactly once per training step, under real DeepSpeed engines over gloo.

One process-group launch per world size (2 and 4 processes) runs every case in a loop; this
process computes the single-process references (no DeepSpeed) and compares:

- **equality**: for each optimizer × ZeRO stage 0–3 × gradient accumulation 1 and 2, the
  parameters after 4 steps equal the ZeRO-0 run and a single-process run of the same optimizer on
  the same global batch, to fp32 round-off (relative to how far the parameters moved); the
  optimizer's state exists only on the owner of each matrix and has the matrix's shape; exactly
  one matrix phase runs per step. Negative controls show that the tolerance would catch the
  silent failures DeepSpeed's own Muon had: a matrix updated element-wise (as a flat vector would
  be), the matrix optimizer bypassed, the update applied per micro-batch.
- **bf16**: every optimizer at ZeRO 0–3 against a reference that runs the same optimizer by hand on
  the gradients DeepSpeed handed it (the bf16 gradients, reduced and clipped, in fp32): parameters,
  optimizer state and step counters equal after every step, so no extra zero-gradient step.
- DeepSpeed's own Muon (``muon_deepspeed``) against the suite's Muon where the math is the same;
  a checkpoint saved and loaded at ZeRO ≥ 1 resumes exactly; ``zero.Init`` models are grouped by
  their real shapes; a matrix optimizer without the partition layout refuses to step.

Settings keep each optimizer's math well conditioned, so that fp32 round-off in the reduced
gradients stays round-off: Shampoo's ridge ε = 1e-3 (its inverse fourth roots of rank-deficient
statistics would amplify noise in the null space), SOAP preconditions only dimensions ≤ 8 (the
conv kernels' modes) with ε = 1e-4 (Adam in a rotated basis turns rotated gradient components at
round-off level into O(1) updates where a factor is rank-deficient, as the 40 × 32 layer's are).
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ranks import end_rank
from torch import nn

import optimizers
from optimizers.deepspeed_zero import deepspeed_version_problem, zero_config
from optimizers.layer_types import LAYER_TYPES, param_shape
from optimizers.zero_partitions import Fragment, check_tiling

pytestmark = pytest.mark.integration

STEPS, MICRO, CLIP = 4, 16, 0.1
STAGES = (0, 1, 2, 3)
SETTINGS: dict[str, dict[str, Any]] = {
    "spectral_newton": {"weight_decay": 0.01},
    "muon": {"weight_decay": 0.01, "ns_dtype": "float32"},
    "shampoo": {"preconditioning_frequency": 2, "weight_decay": 0.01, "epsilon": 1e-3},
    "soap": {"precondition_frequency": 2, "max_precond_dim": 8, "eps": 1e-4},
    "adamw": {"weight_decay": 0.01},
}
MATRIX = ("spectral_newton", "muon", "shampoo", "soap")
REL_TOL = 2e-4  # observed ≤ 3e-5 (fp32 reductions in another order, amplified by the math)
BF16_TOL = 1e-5  # same gradients on both sides: only the order of a few operations differs


def make_model(linear_only: bool = False) -> nn.Module:
    """Conv kernels (6×3×3×3, 8×6×3×3: matrices 6×27, 8×54), 40×32 and 24×40 linears, a head and
    biases; no matrix size is a multiple of the world size, so ZeRO cuts matrices mid-way."""
    torch.manual_seed(0)
    if linear_only:
        return nn.Sequential(nn.Flatten(), nn.Linear(108, 40), nn.Tanh(), nn.Linear(40, 24), nn.Tanh(),
                             nn.Linear(24, 5))
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.Tanh(), nn.Conv2d(6, 8, 3), nn.Flatten(),
        nn.Linear(32, 40), nn.Tanh(), nn.Linear(40, 24), nn.Tanh(), nn.Linear(24, 5),
    )


def batch(step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)
    return torch.randn(MICRO, 3, 6, 6, generator=gen), torch.randn(MICRO, 5, generator=gen)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out.float() - y) ** 2).mean()


def ds_config(name: str, stage: int, accum: int, world: int, clip: float | None = CLIP, bf16: bool = False) -> dict:
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": accum,
        "train_batch_size": MICRO * accum * world, "zero_optimization": {"stage": stage},
        "bf16": {"enabled": bf16}, "steps_per_print": 1 << 30,
    }
    cfg["gradient_clipping"] = 0.0 if clip is None else clip  # DeepSpeed's default is 1.0, not off
    extra = zero_config(name, stage)
    cfg["zero_optimization"].update(extra.pop("zero_optimization", {}))
    cfg.update(extra)
    return cfg


# --- what the workers run -----------------------------------------------------------------------


def _full_params(model: nn.Module, stage: int) -> list[torch.Tensor]:
    """The whole parameters on every rank (a collective at ZeRO-3)."""
    if stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return [p.detach().float().clone() for p in model.parameters()]
    return [p.detach().float().clone() for p in model.parameters()]


def _matrix_state(opt: Any) -> dict[int, dict[str, Any]]:
    """Per-matrix state on this rank by matrix position (SOAP's lives in its library optimizer)."""
    tensors = opt.matrix_tensors()
    if getattr(opt, "inner", None) is not None:
        return {i: copy.deepcopy(opt.inner.state[v]) for i, v in enumerate(opt._views)
                if v in opt.inner.state and opt.inner.state[v]}
    return {i: copy.deepcopy(dict(opt.state[p])) for i, p in enumerate(tensors) if p in opt.state and opt.state[p]}


def _train(engine: Any, rank: int, accum: int, dtype: torch.dtype = torch.float32, steps: range = range(STEPS)) -> None:
    for step in steps:
        for micro in range(accum):
            x, y = batch(step, micro, rank)
            engine.backward(loss_fn(engine(x.to(dtype)), y))
            engine.step()


def _equality_cases(rank: int, world: int) -> dict:
    from optimizers.deepspeed_zero import initialize, master_partitions

    out = {}
    for name, settings in SETTINGS.items():
        for accum in (1, 2):
            for stage in STAGES:
                model = make_model()
                opt = optimizers.build(name, model, **settings)
                engine = initialize(model, opt, ds_config(name, stage, accum, world))
                _train(engine, rank, accum)
                norm = engine.get_global_grad_norm()  # recorded by ZeRO's optimizers, not at ZeRO-0 fp32
                res = {"params": _full_params(model, stage), "norm": None if norm is None else float(norm),
                       "masters": sum(t.numel() for t in master_partitions(engine))}
                if name in MATRIX:
                    res.update(owners=list(opt.sharding.owners), state=_matrix_state(opt), steps=opt.matrix_steps,
                               shapes=[tuple(s) for s in opt.sharding.shapes], metrics=opt.step_metrics())
                out[(name, accum, stage)] = res
    return out


def _group_params(model: nn.Module, group: dict) -> list[torch.Tensor]:
    named = dict(model.named_parameters())
    return [named[n] for n in group["param_names"]]


def _bf16_cases(rank: int, world: int) -> dict:
    """Every optimizer in bf16 at every stage: the gradients the client optimizer received (per
    step and group, with where each piece lies), its parameters and state after every step."""
    import deepspeed

    from optimizers.deepspeed_zero import initialize, read_fragments

    out = {}
    accum = 2
    for name, settings in SETTINGS.items():
        for stage in STAGES:
            model = make_model()
            init = [p.detach().to(torch.bfloat16).float() for p in model.parameters()]
            opt = optimizers.build(name, model, **settings)
            groups = [dict(g) for g in opt.param_groups]  # names and param_names before DeepSpeed rewrites them
            captured: list[dict[str, list[torch.Tensor]]] = []

            def hook(optimizer: Any, args: Any, kwargs: Any, captured: list = captured) -> None:
                for g in optimizer.param_groups:
                    if g["params"]:
                        captured[-1][g["name"]] = [p.grad.detach().clone() for p in g["params"]]

            opt.register_step_pre_hook(hook)
            engine = initialize(model, opt, ds_config(name, stage, accum, world, bf16=True))
            layout = {}
            if stage >= 1:
                for g in groups:
                    layout[g["name"]] = read_fragments(engine, _group_params(model, g))[0]
            steps = []
            for step in range(STEPS):
                captured.append({})
                _train(engine, rank, accum, torch.bfloat16, range(step, step + 1))
                rec: dict[str, Any] = {"grads": captured[-1]}
                names = [n for g in groups for n in g["param_names"]]
                if stage == 0:  # DeepSpeed's fp32 copies are the client's parameters
                    masters = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
                else:
                    masters = [deepspeed.utils.safe_get_full_fp32_param(p).clone() for g in groups
                               for p in _group_params(model, g)]
                rec["masters"] = dict(zip(names, masters, strict=True))
                rec["adamw_steps"] = [int(v["step"]) for v in opt.state.values() if "exp_avg" in v]
                rec["lp"] = dict(zip([n for n, _ in model.named_parameters()], _full_params(model, stage), strict=True))
                if name in MATRIX:
                    rec["state"] = _matrix_state(opt)
                    if name == "soap":
                        rec["soap_step"] = [int(g.get("step", 0)) for g in opt.inner.param_groups]
                steps.append(rec)
            out[(name, stage)] = {
                "init": init, "groups": [(g["name"], list(g["param_names"])) for g in groups], "layout": layout,
                "steps": steps, "ignored": opt.ignored_construction_steps,
                "matrix_steps": getattr(opt, "matrix_steps", None),
                "owners": list(opt.sharding.owners) if name in MATRIX else None,
            }
    return out


def _muon_deepspeed_cases(rank: int, world: int) -> dict:
    """DeepSpeed's Muon and the suite's Muon configured alike: Newton–Schulz in float32 (DeepSpeed's
    ``gram`` iteration runs in float32 on a CPU without float16 matrix products), same coefficients,
    Nesterov, scale √max(1, m/n); linear layers only (conv scales differ); without clipping, and
    with clipping at ZeRO-0 and -2 (DeepSpeed clips its orthogonalised update at ZeRO ≥ 1)."""
    from deepspeed.runtime.zero.muon.original_muon import ns_compute_dtype

    from optimizers.deepspeed_zero import initialize

    torch._dynamo.config.disable = True  # DeepSpeed wraps Newton–Schulz in torch.compile: eager on CPU
    out: dict[Any, Any] = {"ns_dtype": ns_compute_dtype("gram")}
    ours = {"ns_dtype": "float32", "weight_decay": 0.01}
    theirs = {"ns_method": "gram", "weight_decay": 0.01}
    runs = [(name, settings, stage, None) for name, settings in (("muon", ours), ("muon_deepspeed", theirs))
            for stage in STAGES] + [("muon_deepspeed", theirs, stage, CLIP) for stage in (0, 2)]
    for name, settings, stage, clip in runs:
        model = make_model(linear_only=True)
        engine = initialize(model, optimizers.build(name, model, **settings), ds_config(name, stage, 2, world, clip))
        _train(engine, rank, 2)
        out[(name, stage, clip)] = _full_params(model, stage)
    return out


def _checkpoint_cases(rank: int, world: int, tmp: Path) -> dict:
    """Save after 2 steps, continue 2; a fresh engine loaded from the checkpoint continues the same."""
    from optimizers.deepspeed_zero import initialize

    out = {}
    for name, stage in (("spectral_newton", 1), ("muon", 2), ("shampoo", 3), ("soap", 3)):
        runs = []
        for load in (False, True):
            model = make_model()
            engine = initialize(model, optimizers.build(name, model, **SETTINGS[name]), ds_config(name, stage, 2, world))
            if load:
                engine.load_checkpoint(str(tmp / f"{name}-{stage}"))
            else:
                _train(engine, rank, 2, steps=range(2))
                engine.save_checkpoint(str(tmp / f"{name}-{stage}"), tag="t")
            _train(engine, rank, 2, steps=range(2, STEPS))
            runs.append(_full_params(model, stage))
        out[(name, stage)] = runs
    return out


def _zero_init_cases(rank: int, world: int) -> dict:
    """Models built under ``deepspeed.zero.Init`` have flat placeholders: grouping must read their
    real shapes; then training at ZeRO-3 equals the normally built model's."""
    import deepspeed
    from transformers import GPT2Config, GPT2LMHeadModel

    from optimizers.deepspeed_zero import initialize

    cfg = ds_config("muon", 3, 1, world)
    out: dict[str, Any] = {}
    gpt = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    torch.manual_seed(0)
    plain = GPT2LMHeadModel(gpt)
    with deepspeed.zero.Init(config_dict_or_path=cfg):
        partitioned = GPT2LMHeadModel(gpt)
    out["gpt2_placeholder_shapes"] = sorted({tuple(p.shape) for p in partitioned.parameters()})
    for key, model in (("gpt2_plain", plain), ("gpt2_zero_init", partitioned)):
        opt = optimizers.build("muon", model)
        out[key] = [(g["name"], g["param_names"], g["layer_types"]) for g in opt.param_groups]
    with deepspeed.zero.Init(config_dict_or_path=cfg):
        model = make_model()
    opt = optimizers.build("muon", model, **SETTINGS["muon"])
    out["cnn_groups"] = [(g["name"], g["param_names"]) for g in opt.param_groups]
    engine = initialize(model, opt, cfg)
    _train(engine, rank, 1)
    out["cnn_params"] = _full_params(model, 3)
    return out


def _unattached_case(rank: int, world: int) -> str:
    """``deepspeed.initialize`` without the layout: the matrix optimizer must refuse, not train."""
    import deepspeed

    model = make_model()
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizers.build("muon", model),
                                      config=ds_config("muon", 2, 1, world), dist_init_required=False)
    x, y = batch(0, 0, rank)
    engine.backward(loss_fn(engine(x), y))
    try:
        engine.step()
    except RuntimeError as exc:
        return str(exc)
    return "stepped"


def _worker(rank: int, world: int, port: int, out_dir: str, full: bool) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=180))
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    import time

    cases = {"equality": lambda: _equality_cases(rank, world)}
    if full:
        cases.update(bf16=lambda: _bf16_cases(rank, world), unattached=lambda: _unattached_case(rank, world),
                     checkpoint=lambda: _checkpoint_cases(rank, world, Path(out_dir) / "ckpt"),
                     zero_init=lambda: _zero_init_cases(rank, world),
                     muon_deepspeed=lambda: _muon_deepspeed_cases(rank, world))
    out: dict[str, Any] = {"seconds": {}}
    for key, run in cases.items():
        start = time.perf_counter()
        out[key] = run()
        out["seconds"][key] = time.perf_counter() - start
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)
    end_rank()  # STACK.md: DeepSpeed ranks sometimes abort at interpreter exit


def _launch(tmp_path_factory: pytest.TempPathFactory, world: int, full: bool) -> list[dict]:
    out = tmp_path_factory.mktemp(f"zero{world}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    mp.spawn(_worker, args=(world, port, str(out), full), nprocs=world, join=True)
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(world)]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return _launch(tmp_path_factory, 2, full=True)


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return _launch(tmp_path_factory, 4, full=False)


# --- single-process references (this process: no process group, no DeepSpeed) ------------------


def reference(name: str, accum: int, world: int, settings: dict | None = None, per_micro: bool = False,
              clip: float | None = CLIP) -> list[torch.Tensor]:
    """The optimizer alone on the global batch (every rank's micro-batches), clipped like DeepSpeed;
    ``per_micro`` steps after every micro-batch instead (the wrong way)."""
    model = make_model()
    opt = optimizers.build(name, model, **(SETTINGS[name] if settings is None else settings))
    for step in range(STEPS):
        opt.zero_grad()
        for micro in range(accum):
            for r in range(world):
                x, y = batch(step, micro, r)
                (loss_fn(model(x), y) / ((1 if per_micro else accum) * world)).backward()
            if per_micro:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad()
        if not per_micro:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return [p.detach().clone() for p in model.parameters()]


def relative_diff(a: list[torch.Tensor], b: list[torch.Tensor], linear_only: bool = False) -> float:
    """max |a − b| over all parameters, relative to how far training moved them (max |b − init|)."""
    init = make_model(linear_only).parameters()
    moved = max(float((x - y.detach()).abs().max()) for x, y in zip(b, init, strict=True))
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True)) / moved


@pytest.fixture(scope="module")
def references() -> dict:
    return {(name, accum, world): reference(name, accum, world)
            for name in SETTINGS for accum in (1, 2) for world in (2, 4)}


# --- no process group -----------------------------------------------------------------------------


def test_tiling_check_refuses_gaps_overlaps_and_strays() -> None:
    shapes = [(2, 3), (4,)]
    good = [[Fragment(0, 0, 0, 4)], [Fragment(0, 4, 0, 2), Fragment(1, 0, 2, 4)]]
    check_tiling(good, shapes)
    for bad in ([[Fragment(0, 0, 0, 4)], [Fragment(1, 0, 0, 4)]],  # matrix 0 incomplete
                [[Fragment(0, 0, 0, 6)], [Fragment(0, 4, 0, 2), Fragment(1, 0, 2, 4)]],  # overlap
                [[Fragment(0, 0, 0, 6), Fragment(2, 0, 6, 1)], [Fragment(1, 0, 0, 4)]]):  # unknown matrix
        with pytest.raises(RuntimeError, match="tile|malformed"):
            check_tiling(bad, shapes)


def test_deepspeed_version_range_and_config_entries() -> None:
    assert deepspeed_version_problem() is None  # the installed DeepSpeed is the tested one
    assert deepspeed_version_problem("0.19.8") is None and deepspeed_version_problem("0.19.12+abc") is None
    for version in ("0.18.4", "0.20.0", "1.0"):
        assert "tested on DeepSpeed ≥ 0.19.8, < 0.20" in deepspeed_version_problem(version)
    assert zero_config("spectral_newton", 0) == {} and zero_config("adamw", 3) == {}
    assert zero_config("soap", 3)["zero_optimization"]["sub_group_size"] >= 1 << 40
    assert zero_config("muon_deepspeed", 3) == {"zero_optimization": {"reduce_scatter": False}}
    assert zero_config("muon_deepspeed", 2) == {}


def test_shapes_come_from_ds_shape_on_placeholders() -> None:
    placeholder = nn.Parameter(torch.empty(0))
    placeholder.ds_shape = torch.Size([8, 6, 3, 3])
    assert param_shape(placeholder) == (8, 6, 3, 3)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].weight.ds_shape = model[0].weight.shape
    model[0].weight.data = torch.empty(0)  # what zero.Init leaves on a rank
    groups = optimizers.build("muon", model).param_groups
    assert groups[0]["kind"] == "matrix" and groups[0]["param_names"] == ["0.weight"]


def test_negative_controls_exceed_the_tolerance() -> None:
    """The tolerance separates round-off from the silent failures the equality test must catch."""
    for name in MATRIX:
        ref = reference(name, 2, 2)
        elementwise = reference(name, 2, 2, {**SETTINGS[name], "adamw_types": list(LAYER_TYPES)})
        per_micro = reference(name, 2, 2, per_micro=True)
        assert relative_diff(elementwise, ref) > 50 * REL_TOL, name  # matrices as vectors / bypassed
        assert relative_diff(per_micro, ref) > 50 * REL_TOL, name  # update per micro-batch


# --- equality with ZeRO-0 and with one process ------------------------------------------------------


def _check_equality(results: list[dict], references: dict, world: int) -> None:
    for name in SETTINGS:
        for accum in (1, 2):
            ref = references[(name, accum, world)]
            zero0 = results[0]["equality"][(name, accum, 0)]["params"]
            for stage in STAGES:
                runs = [r["equality"][(name, accum, stage)] for r in results]
                case = f"{name} accum={accum} ZeRO-{stage} P={world}"
                assert stage == 0 or runs[0]["norm"] > CLIP, case  # clipping was active
                for r in runs:  # every rank holds the same parameters
                    assert all(torch.equal(a, b) for a, b in zip(r["params"], runs[0]["params"], strict=True)), case
                assert relative_diff(runs[0]["params"], zero0) < REL_TOL, case
                assert relative_diff(runs[0]["params"], ref) < REL_TOL, case
                # DeepSpeed's fp32 masters: none at ZeRO-0 (fp32), else a 1/P share (+ padding) per rank
                numel = sum(p.numel() for p in make_model().parameters())
                masters = [r["masters"] for r in runs]
                assert masters == [0] * world if stage == 0 else (
                    numel <= sum(masters) < numel + 64 * world and max(masters) <= numel // world + 64), case
                if name not in MATRIX:
                    continue
                owners, shapes = runs[0]["owners"], runs[0]["shapes"]
                assert set(owners) == set(range(world)), case  # the work is spread over every rank
                for rank, r in enumerate(runs):
                    assert r["steps"] == STEPS, case  # one matrix phase per optimizer step
                    owned = sorted(i for i, o in enumerate(owners) if o == rank)
                    assert sorted(r["state"]) == owned, case  # state only on owners
                    for i, state in r["state"].items():  # ... and shaped like the matrix, not a flat piece
                        buffers = [v for v in state.values() if isinstance(v, torch.Tensor) and v.ndim >= 2]
                        assert buffers, case
                        assert any(tuple(v.shape) == shapes[i] for v in buffers) or name == "shampoo", case
                    if stage >= 1 and world > 1:
                        assert r["metrics"]["bytes_communicated"] > 0, case


def test_zero_stages_equal_zero0_and_one_process_on_two_ranks(two: list[dict], references: dict) -> None:
    _check_equality(two, references, 2)


def test_zero_stages_equal_zero0_and_one_process_on_four_ranks(four: list[dict], references: dict) -> None:
    _check_equality(four, references, 4)


def test_shampoo_factors_have_the_matrix_dimensions(two: list[dict]) -> None:
    for rank, r in enumerate(two):
        run = r["equality"][("shampoo", 2, 2)]
        for i, state in run["state"].items():
            m, n = optimizers.matrix_shape(run["shapes"][i])
            assert [tuple(s.shape) for s in state["stats"][0]] == [(m, m), (n, n)], rank


# --- bf16: exactly one optimizer step per training step ---------------------------------------------


def _assemble(per_rank: list[list[Fragment]], flats: list[torch.Tensor], shapes: list[tuple]) -> list[torch.Tensor]:
    full = [torch.zeros(torch.Size(s).numel()) for s in shapes]
    for fragments, flat in zip(per_rank, flats, strict=True):
        for f in fragments:
            full[f.matrix][f.param_start : f.param_start + f.numel] = flat[f.flat_start : f.flat_start + f.numel]
    return [t.view(s) for t, s in zip(full, shapes, strict=True)]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a.float() - b.float()).abs().max()) <= BF16_TOL * max(1.0, float(b.float().abs().max()))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_bf16_steps_exactly_once_per_training_step(two: list[dict], name: str) -> None:
    for stage in STAGES:
        runs = [r["bf16"][(name, stage)] for r in two]
        case = f"{name} bf16 ZeRO-{stage}"
        # DeepSpeed's zero-gradient step at construction (ZeRO-0 bf16 only) was ignored.
        assert all(r["ignored"] == (1 if stage == 0 else 0) for r in runs), case
        model = make_model()
        with torch.no_grad():
            for p, v in zip(model.parameters(), runs[0]["init"], strict=True):
                p.copy_(v)
        ref = optimizers.build(name, model, **SETTINGS[name])
        params = dict(model.named_parameters())
        order = [n for _, names in runs[0]["groups"] for n in names]
        for step in range(STEPS):
            for gname, names in runs[0]["groups"]:
                shapes = [tuple(params[n].shape) for n in names]
                if stage == 0:
                    grads = runs[0]["steps"][step]["grads"][gname]
                else:
                    flats = [r["steps"][step]["grads"][gname][0] for r in runs]
                    grads = _assemble([r["layout"][gname] for r in runs], flats, shapes)
                for n, g in zip(names, grads, strict=True):
                    params[n].grad = g.clone()
            ref.step()
            rec = runs[0]["steps"][step]
            for n in order:
                master = rec["masters"][n]
                assert _close(master, params[n].detach()), (case, step, n)  # fp32 master = reference
                assert torch.equal(rec["lp"][n], master.to(torch.bfloat16).float()), (case, step, n)  # bf16 = its cast
            counters = [s for r in runs for s in r["steps"][step]["adamw_steps"]]
            assert counters and all(s == step + 1 for s in counters), (case, counters)
            if name in MATRIX:
                assert all(r["matrix_steps"] == STEPS for r in runs), case
                _check_state_against(ref, runs, step, case)


def _leaves(value: Any) -> list[Any]:
    """The tensors and numbers in a state entry (Shampoo keeps lists of lists of factors)."""
    if isinstance(value, list | tuple):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value] if isinstance(value, torch.Tensor | int | float) else []


def _check_state_against(ref: Any, runs: list[dict], step: int, case: str) -> None:
    """Every owner's per-matrix state equals the reference's for that matrix (step counters exact)."""
    expected = _matrix_state(ref)
    seen = set()
    for r in runs:
        state = r["steps"][step]["state"]
        seen |= set(state)
        for i, entry in state.items():
            assert entry.keys() == expected[i].keys(), (case, step, i)
            for key in entry:
                got, want = _leaves(entry[key]), _leaves(expected[i][key])
                assert len(got) == len(want), (case, step, i, key)
                for value, ref_value in zip(got, want, strict=True):
                    if isinstance(value, torch.Tensor) and value.is_floating_point():
                        assert _close(value, ref_value), (case, step, i, key)
                    else:  # step counters: exact
                        assert float(value) == float(ref_value), (case, step, i, key)
        if "soap_step" in r["steps"][step]:
            assert r["steps"][step]["soap_step"] == [step + 1], case
    assert seen == set(expected), case


# --- DeepSpeed's Muon, checkpoints, zero.Init, the refusal -------------------------------------------


def test_deepspeed_muon_matches_ours_where_the_math_is_the_same(two: list[dict]) -> None:
    res = two[0]["muon_deepspeed"]
    assert res["ns_dtype"] == torch.float32  # this CPU has no float16 matrix products
    ours0 = res[("muon", 0, None)]
    for stage in STAGES:
        # Gram Newton–Schulz equals the quintic iteration in exact arithmetic: fp32 round-off apart.
        assert relative_diff(res[("muon_deepspeed", stage, None)], ours0, linear_only=True) < REL_TOL, stage
        assert relative_diff(res[("muon", stage, None)], ours0, linear_only=True) < REL_TOL, stage
    # Where they differ: with clipping DeepSpeed clips the orthogonalised update at ZeRO ≥ 1 (the
    # suite and DeepSpeed at ZeRO-0 clip the gradient), so the two stages part.
    clipped0, clipped2 = res[("muon_deepspeed", 0, CLIP)], res[("muon_deepspeed", 2, CLIP)]
    assert relative_diff(clipped2, clipped0, linear_only=True) > 50 * REL_TOL


def test_deepspeed_muon_fails_on_conv_kernels_so_muon_deepspeed_refuses_them() -> None:
    """DeepSpeed 0.19.8's ``muon_update`` cannot broadcast its orthogonalised out × (in·kh·kw) update
    back to a 4-D gradient; the registry entry refuses such kernels up front, naming them."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.muon.original_muon import muon_update

    torch._dynamo.config.disable = True
    try:
        grad = torch.randn(8, 6, 3, 3)
        with pytest.raises(RuntimeError, match="size of tensor"):
            muon_update(grad.clone(), torch.zeros_like(grad), beta=0.0, ns_method="gram")
    finally:
        torch._dynamo.config.disable = False
    with pytest.raises(ValueError, match=r"muon_deepspeed: .*0\.weight, 2\.weight.*adamw_types"):
        optimizers.build("muon_deepspeed", make_model())
    model = make_model()
    opt = optimizers.build("muon_deepspeed", model, adamw_types=["bias", "norm", "embedding", "head", "conv",
                                                                 "conv_stem"])
    muon = [g for g in opt.param_groups if g["use_muon"]]
    assert [tuple(p.shape) for g in muon for p in g["params"]] == [(40, 32), (24, 40)]


def test_checkpoint_at_zero_resumes_exactly(two: list[dict]) -> None:
    for r in two:
        for key, (straight, resumed) in r["checkpoint"].items():
            assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True)), key


def test_zero_init_models_are_grouped_by_their_real_shapes(two: list[dict], references: dict) -> None:
    res = two[0]["zero_init"]
    assert res["gpt2_placeholder_shapes"] in ([(0,)], [(0,), (1,)])  # DeepSpeed's flat placeholders
    assert res["gpt2_zero_init"] == res["gpt2_plain"]
    types = dict(zip(res["gpt2_plain"][0][1], res["gpt2_plain"][0][2], strict=True))
    assert types["transformer.h.0.attn.c_attn.weight"] == "attn_qkv"  # GPT-2's Conv1D recognised
    assert res["cnn_groups"][0] == ("matrix", ["0.weight", "2.weight", "4.weight", "6.weight"])
    assert relative_diff(res["cnn_params"], references[("muon", 1, 2)]) < REL_TOL


def test_matrix_optimizer_without_the_layout_refuses_to_step(two: list[dict]) -> None:
    for r in two:
        assert "partition layout" in r["unattached"] and "deepspeed_zero.initialize" in r["unattached"]


def test_owners_hold_their_share_of_the_matrix_state(two: list[dict]) -> None:
    """ZeRO-1's point for matrix state: each rank keeps about 1/P of it (LPT balances cost)."""
    run = [r["equality"][("muon", 1, 1)] for r in two]
    sizes = defaultdict(int)
    for rank, r in enumerate(run):
        for state in r["state"].values():
            sizes[rank] += state["momentum_buffer"].numel()
    total = sum(torch.Size(s).numel() for s in run[0]["shapes"])
    assert sum(sizes.values()) == total and all(0 < v < total for v in sizes.values())


# --- the sweep path: bench's trial at ZeRO-2 and -3, every optimizer, one launch -------------------

TRIAL_STAGES = (0, 2, 3)


def _trial_specs() -> list[Any]:
    """Every optimizer of the suite on the quickstart-sized CNN (DeepSpeed's Muon with its kernels on
    AdamW), at ZeRO 0, 2 and 3, validated as a sweep config (so validation accepts them), with a
    checkpoint in the middle of each trial."""
    from conftest import tiny_sweep

    from launchers.sweep import expand, parse_config

    kernels_to_adamw = ["bias", "norm", "embedding", "head", "conv", "conv_stem", "depthwise_conv"]
    entries = [{"name": name, "settings": {**SETTINGS[name], "lr": 0.01}} for name in SETTINGS]
    entries.append({"name": "muon_deepspeed", "settings": {"lr": 0.01, "adamw_types": kernels_to_adamw}})
    specs = []
    for stage in TRIAL_STAGES:
        doc = tiny_sweep(name=f"zero{stage}", optimizers=entries)
        # No clipping: DeepSpeed's Muon clips its orthogonalised update at ZeRO ≥ 1 and the gradient at
        # ZeRO-0 (test_deepspeed_muon_matches_ours_where_the_math_is_the_same); the equality cases clip.
        doc["training"].update(zero_stage=stage, steps=4, eval_every=2, checkpoint_every=2, grad_clip=None)
        specs += expand(parse_config(doc))
    return specs


def _trial_worker(rank: int, world: int, port: int, specs: list[str], storage: str) -> None:
    """Run bench's trials one after another in one process group (as ``specbench train`` runs one)."""
    from bench.config import TrialSpec
    from bench.distributed import configure_cpu_threads, init_process_group
    from bench.trial import run_trial

    os.environ["DS_ACCELERATOR"] = "cpu"
    configure_cpu_threads(1)
    torch._dynamo.config.disable = True  # DeepSpeed's Muon compiles Newton–Schulz: eager on CPU
    init_process_group(rank, world, port)
    for spec in specs:
        run_trial(TrialSpec.model_validate_json(spec), storage)
    end_rank()


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Any]:
    import pyarrow.parquet as pq

    specs, storage = _trial_specs(), tmp_path_factory.mktemp("trials")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    mp.spawn(_trial_worker, args=(2, port, [s.model_dump_json() for s in specs], str(storage)), nprocs=2, join=True)
    return {(s.optimizer, s.training.zero_stage):
            pq.read_table(storage / s.sweep_name / "trials" / s.trial_id / "steps.parquet").to_pandas()
            for s in specs}


def test_every_optimizer_trains_a_trial_at_zero_2_and_3_like_zero_0(trials: dict) -> None:
    """The sweep path (config validation, bench's engine, checkpoints) at ZeRO-2 and -3 gives the
    losses of ZeRO-0 for all five optimizers and DeepSpeed's Muon (fp32 round-off apart)."""
    for name in [*SETTINGS, "muon_deepspeed"]:
        zero0 = trials[(name, 0)]
        assert list(zero0["step"]) == [1, 2, 3, 4], name
        assert zero0["train_loss"].iloc[-1] != zero0["train_loss"].iloc[0], name  # it trained
        for stage in TRIAL_STAGES[1:]:
            rows = trials[(name, stage)]
            assert list(rows["step"]) == [1, 2, 3, 4], (name, stage)
            torch.testing.assert_close(torch.tensor(rows["train_loss"].to_numpy()),
                                       torch.tensor(zero0["train_loss"].to_numpy()), rtol=1e-4, atol=1e-6,
                                       msg=f"{name} ZeRO-{stage}")
            if name in MATRIX:  # the owner exchange ran and was recorded
                assert (rows["opt_bytes_communicated"] > 0).all(), (name, stage)
