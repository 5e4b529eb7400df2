"""Owner-rank sharding of the matrix optimizers (optimizers.distributed).

Unit tests of the LPT assignment and the bucket plan, then two real gloo processes: for Spectral
Newton, Muon, Shampoo, SOAP and a plug-in matrix optimizer (tests/test_optimizers_frame.py), the
sharded optimizer (each matrix computed by its owner, values broadcast) must give the parameters
of the redundant one (every rank computes everything, i.e. the single-process optimizer), with
the same gradients fed on both ranks.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ranks import end_rank
from torch import nn

import optimizers
from optimizers.distributed import (
    OwnerSharding,
    lpt_assign,
    matrix_cost,
    plan_buckets,
    rank_and_world,
    rank_loads,
)

# --- assignment and buckets --------------------------------------------------------------------


def test_matrix_cost_uses_out_by_rest_view() -> None:
    assert matrix_cost((64, 32, 3, 3)) == 64 * 288 * 64
    assert matrix_cost((768, 3072)) == 768 * 3072 * 768
    assert matrix_cost((10,)) == 10.0


def test_lpt_worked_example_and_ties() -> None:
    # 5 → r0, 4 → r1, 3 → r1 (4 < 5), 3 → r0 (5 < 7), 3 → r1 (7 < 8): loads 8 and 10.
    assert lpt_assign([5, 4, 3, 3, 3], 2) == [0, 1, 1, 0, 1]
    assert lpt_assign([1, 1, 1, 1], 2) == [0, 1, 0, 1]  # equal costs: list order, lowest rank first
    assert lpt_assign([3.0], 4) == [0]
    assert lpt_assign([], 3) == []
    with pytest.raises(ValueError):
        lpt_assign([1.0], 0)


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_lpt_is_deterministic_balanced_and_covers_everything(world: int) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    costs = [matrix_cost(p.shape) for p in model.parameters() if p.ndim >= 2]
    owners = lpt_assign(costs, world)
    assert owners == lpt_assign(list(costs), world)  # deterministic: same on every rank
    assert len(owners) == len(costs) and set(owners) <= set(range(world))  # each owned exactly once
    loads = rank_loads(costs, owners, world)
    assert sum(loads) == pytest.approx(sum(costs))
    # List scheduling bound: every rank is within one (largest) item of the mean.
    assert max(loads) <= sum(costs) / world + max(costs)
    # LPT beats the naive round-robin over the model order on this model.
    naive = rank_loads(costs, [i % world for i in range(len(costs))], world)
    assert max(loads) <= max(naive)
    # Shuffling the input changes only tie-breaks, not the achieved makespan on distinct costs.
    order = list(range(len(costs)))
    random.Random(0).shuffle(order)
    shuffled = [costs[i] for i in order]
    assert max(rank_loads(shuffled, lpt_assign(shuffled, world), world)) == pytest.approx(max(loads))


def test_bucket_plan_covers_owned_params_once_and_respects_cap() -> None:
    params = [torch.zeros(s) for s in [(64, 64), (32, 3, 3, 3), (10, 10), (128, 64), (16, 16)]]
    params.append(torch.zeros(20, 20, dtype=torch.float64))
    owners = [0, 1, 0, 1, 0, 1]
    cap = 20_000  # bytes: forces (64×64 fp32 = 16 KiB) into its own bucket
    buckets = plan_buckets(params, owners, 2, cap)
    seen = [i for b in buckets for i in b.indices]
    assert sorted(seen) == list(range(len(params)))
    for b in buckets:
        assert all(owners[i] == b.owner and params[i].dtype == b.dtype for i in b.indices)
        assert b.nbytes <= cap or len(b.indices) == 1
    assert [b.owner for b in buckets] == sorted(b.owner for b in buckets)  # owner order
    assert plan_buckets(params, owners, 2, cap) == buckets


def test_single_process_owns_everything_and_communicates_nothing() -> None:
    p = [torch.zeros(4, 4), torch.zeros(3, 5)]
    sharding = OwnerSharding(p, "sharded")
    assert sharding.owns_index(0) and sharding.owns_index(1) and not sharding.sharded
    assert sharding.owned_ids(p) == {id(p[0]), id(p[1])}
    sharding.sync_(p)
    sharding.record_load(0.5)
    assert sharding.metrics() == {"comm_time_s": 0.0, "load_imbalance": 1.0, "bytes_communicated": 0.0}
    with pytest.raises(ValueError, match="distribution"):
        OwnerSharding(p, "zero3")


# --- two gloo processes ------------------------------------------------------------------------

SETTINGS = {
    "spectral_newton": {"weight_decay": 0.01},
    "muon": {"weight_decay": 0.01},
    "shampoo": {"preconditioning_frequency": 2, "weight_decay": 0.01},
    "soap": {"precondition_frequency": 2},
    "sign_momentum": {"weight_decay": 0.01},  # a plug-in that writes only its per-matrix update
}
STEPS = 4


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.Tanh(), nn.Conv2d(6, 8, 3), nn.Flatten(),  # 6×27 and 8×54 kernels
        nn.Linear(32, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 24), nn.Tanh(),
        nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 5),
    )


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 3, 6, 6, generator=gen), torch.randn(8, 5, generator=gen)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = batch(step)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def matrix_state(opt: torch.optim.Optimizer) -> dict:
    """state of the matrix params (where each optimizer keeps it), keyed by position."""
    if getattr(opt, "inner", None) is not None:  # SOAP keeps it in pytorch-optimizer's optimizer
        keys = opt._views
        return {i: opt.inner.state[k] for i, k in enumerate(keys) if k in opt.inner.state and opt.inner.state[k]}
    return {i: opt.state[p] for i, p in enumerate(opt.matrix_params()) if p in opt.state and opt.state[p]}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        from test_optimizers_frame import SignMomentum

        # The plug-in example, registered in this worker process only.
        optimizers.register(optimizers.matrix_spec("sign_momentum", SignMomentum))
        out: dict = {"rank_and_world": rank_and_world()}
        for name, settings in SETTINGS.items():
            sharded_model, redundant_model = make_model(), make_model()
            sharded = optimizers.build(name, sharded_model, distribution="sharded", bucket_cap_mb=0.004, **settings)
            redundant = optimizers.build(name, redundant_model, distribution="redundant", **settings)
            train(sharded_model, sharded, range(STEPS))
            train(redundant_model, redundant, range(STEPS))
            names = [n for n, p in sharded_model.named_parameters() if any(p is q for q in sharded.matrix_params())]
            res = {
                "params": {n: p.detach().clone() for n, p in sharded_model.named_parameters()},
                "max_diff": max((a - b).abs().max().item() for a, b in
                                zip(sharded_model.parameters(), redundant_model.parameters(), strict=True)),
                "bitwise": all(torch.equal(a, b) for a, b in
                               zip(sharded_model.parameters(), redundant_model.parameters(), strict=True)),
                "matrix_names": names,
                "owners": list(sharded.sharding.owners),
                "owned": sorted(sharded.sharding.owned_indices()),
                "state_positions": sorted(matrix_state(sharded)),
                "redundant_state_positions": sorted(matrix_state(redundant)),
                "metrics": sharded.step_metrics(),
                "redundant_metrics": redundant.step_metrics(),
                "buckets": len(sharded.sharding.buckets),
            }
            # Checkpoint: the full state gathered on every rank; a fresh sharded optimizer loaded
            # from it continues exactly like the original.
            full = copy.deepcopy(sharded.state_dict())  # as if saved to disk (state_dict aliases live tensors)
            inner = full.get("inner", full)
            res["full_state_entries"] = sum(1 for v in inner["state"].values() if v)
            clone_model = copy.deepcopy(sharded_model)
            clone = optimizers.build(name, clone_model, distribution="sharded", bucket_cap_mb=0.004, **settings)
            clone.load_state_dict(full)
            res["clone_state_positions"] = sorted(matrix_state(clone))
            train(sharded_model, sharded, range(STEPS, STEPS + 2))
            train(clone_model, clone, range(STEPS, STEPS + 2))
            res["resume_bitwise"] = all(torch.equal(a, b) for a, b in
                                        zip(sharded_model.parameters(), clone_model.parameters(), strict=True))
            out[name] = res
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump(out, fh)
    except BaseException:  # the traceback reaches the launcher
        dist.destroy_process_group()
        raise
    end_rank()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    results = []
    for rank in range(2):
        with open(out / f"rank{rank}.pkl", "rb") as fh:
            results.append(pickle.load(fh))
    return results


def test_rank_and_world(two_rank_results: list[dict]) -> None:
    assert rank_and_world() == (0, 1)  # no process group here
    assert [r["rank_and_world"] for r in two_rank_results] == [(0, 2), (1, 2)]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_sharded_equals_redundant_on_two_gloo_ranks(name: str, two_rank_results: list[dict]) -> None:
    r0, r1 = (r[name] for r in two_rank_results)
    # Same parameters as every-rank-computes-everything (= the single-process optimizer), to fp32
    # rounding; Muon, Shampoo and SOAP step each matrix alone and are in fact bitwise equal.
    for r in (r0, r1):
        assert r["max_diff"] <= 1e-6, r["max_diff"]
        if name != "spectral_newton":  # SN batches equal shapes, so its batches differ by rank
            assert r["bitwise"]
    # Replicas stay identical: the broadcast values are exact.
    for n in r0["params"]:
        assert torch.equal(r0["params"][n], r1["params"][n]), n
    # Both ranks computed the same assignment; every matrix is owned exactly once.
    assert r0["owners"] == r1["owners"] and r0["matrix_names"] == r1["matrix_names"]
    assert set(r0["owners"]) == {0, 1}
    assert sorted(r0["owned"] + r1["owned"]) == list(range(len(r0["owners"])))
    # Optimizer state exists only for owned matrices (the redundant one keeps all of them).
    assert r0["state_positions"] == r0["owned"] and r1["state_positions"] == r1["owned"]
    assert r0["redundant_state_positions"] == list(range(len(r0["owners"])))
    # Metrics: bytes broadcast (several buckets under a tiny cap), load imbalance ≥ 1.
    for r in (r0, r1):
        m = r["metrics"]
        assert m["bytes_communicated"] > 0 and m["comm_time_s"] > 0 and m["load_imbalance"] >= 1.0
        assert r["buckets"] >= 3
        assert r["redundant_metrics"]["comm_time_s"] == 0 and r["redundant_metrics"]["load_imbalance"] >= 1.0
        key = "spectral_time_s" if name == "spectral_newton" else "precond_time_s"
        assert m[key] > 0
    # Checkpoints: the gathered state covers every matrix on both ranks; reloading keeps only
    # the owned entries and resumes exactly.
    for r in (r0, r1):
        assert r["full_state_entries"] >= len(r["owners"])
        assert r["clone_state_positions"] == r["owned"]
        assert r["resume_bitwise"]
