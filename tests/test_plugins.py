"""Plug-ins (docs/plugins.md): optimizers, models and datasets from outside the package.

The example package examples/specbench-example-plugin is pip-installed by the ``example_plugin``
fixture (tests/conftest.py) and used as a user would: by its entry-point names and by
``module.path:attr``. Checked here: plug-ins resolve into the same frames as built-ins (settings
validation, ``requires_full_matrices``, the matrix-optimizer base with its AdamW side-car,
sharding and checkpoints), every kind of bad plug-in is refused at validation with exit status 2
before anything starts, nothing beyond ``module:attr`` is read from a string, and ``specbench
list`` shows plug-ins with their origin. The sweep with Ray is in test_ray_plugins.py.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import socket
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_sweep
from ranks import end_rank
from torch import nn

import optimizers
from bench import data, models
from bench.config import WorkloadConfig, settings_problems
from bench.workload import Workload
from launchers import cli
from optimizers.plugins import ResolutionError, import_reference, parse_reference

EXAMPLE_OPT = "specbench_example_plugin.optimizer:LayerwiseSpectralNewton"


# --- factories named by module path in the tests below (this module is importable as test_plugins)


def sgd_factory(model: nn.Module, lr: float = 0.1, nesterov: bool = False) -> torch.optim.Optimizer:
    """A factory plug-in: its settings come from this signature."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5, nesterov=nesterov)


def full_matrix_factory(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    """A factory plug-in that says it needs whole matrices but is no MatrixOptimizer."""
    return torch.optim.SGD(model.parameters(), lr=lr)


full_matrix_factory.requires_full_matrices = True  # type: ignore[attr-defined]


def not_an_optimizer_factory(model: nn.Module) -> nn.Module:
    return model


def lying_model_factory(task, width: int = 3) -> nn.Module:
    return width  # type: ignore[return-value]  # declared a module, returns an int


# --- resolution ---------------------------------------------------------------------------------


def test_entry_point_and_module_path_resolve_to_the_built_in_frame(example_plugin: Path) -> None:
    from specbench_example_plugin.optimizer import LayerwiseSpectralNewton

    by_entry, by_path = optimizers.resolve("layerwise_spectral_newton"), optimizers.resolve(EXAMPLE_OPT)
    for spec in (by_entry, by_path):  # what matrix_spec gives a built-in: the class's settings and flag
        assert spec.settings is LayerwiseSpectralNewton.settings_model and spec.requires_full_matrices is True
        assert spec.matrix_frame is True  # so it gets whole matrices at ZeRO ≥ 1 too
    assert by_entry.name == "layerwise_spectral_newton" and by_path.name == EXAMPLE_OPT
    assert optimizers.available() == ["adamw", "muon", "muon_deepspeed", "shampoo", "soap",
                                      "spectral_newton"]  # built-ins only
    (entry,) = [e for e in optimizers.installed_plugins() if e[0] == "layerwise_spectral_newton"]
    assert entry[1] == f"entry point of specbench-example-plugin 0.1.0 ({EXAMPLE_OPT})"
    assert models.check_spec("mlp") is None and models.check_spec("specbench_example_plugin.models:mlp") is None
    assert data.check_spec("stripes") is None
    assert models.allowed_args("mlp") == {"hidden": "width of each hidden layer (int, default 64)",
                                          "depth": "number of hidden layers (int, default 2)"}


def test_torch_optimizer_class_gets_settings_from_its_signature(example_plugin: Path) -> None:
    fields = {f: d for f, d, _ in optimizers.describe("torch.optim:SGD")}
    assert fields["lr"] == 0.001 and fields["momentum"] == 0 and fields["nesterov"] is False
    # Types as written, unknown keys refused, as for built-ins.
    assert settings_problems("torch.optim:SGD", {"lr": 0.1, "momentum": 0.9}, "s") == []
    (typed,) = settings_problems("torch.optim:SGD", {"lr": "0.1"}, "s")
    assert typed.startswith("s.lr: expected a number, got the string '0.1'")
    (unknown,) = settings_problems("torch.optim:SGD", {"momentun": 0.9}, "s")
    assert unknown.startswith("s.momentun: unknown key")
    # The validated settings reach the constructor: one step equals torch's SGD built by hand.
    torch.manual_seed(0)
    model, ref_model = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    ref_model.load_state_dict(model.state_dict())
    opt = optimizers.build("torch.optim:SGD", model, lr=0.1, momentum=0.9, nesterov=True)
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(6, 4, dtype=torch.float64)
    for m, o in ((model, opt), (ref_model, ref)):
        for _ in range(2):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert optimizers.requires_full_matrices("torch.optim:SGD") is False


def test_factory_plugin_is_built_with_its_validated_settings() -> None:
    assert [f for f, _, _ in optimizers.describe("test_plugins:sgd_factory")] == ["lr", "nesterov"]
    opt = optimizers.build("test_plugins:sgd_factory", nn.Linear(2, 2), lr=0.25)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.25


# --- the example optimizer: its math, and what the base gives it --------------------------------


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 6), nn.Tanh(),
                         nn.Linear(6, 9, bias=False), nn.Tanh(), nn.Linear(9, 3)).double()


def _loss_grads(model: nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(10 + step)
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64, generator=gen)
    y = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()


def test_example_optimizer_matches_an_explicit_svd_oracle(example_plugin: Path) -> None:
    """W ← W·(1 − lr·λ) − lr·(m/n)^p·U diag(σ/(σ^α + d)) Vᵀ of buf/‖buf‖_F, by the plug-in's
    entry-point name; float64 against torch.linalg.svd."""
    lr, mu, wd, alpha, d, p = 0.05, 0.8, 0.1, 2.0, 0.1, 0.5
    model = _tiny()
    opt = optimizers.build("layerwise_spectral_newton", model, lr=lr, momentum=mu, weight_decay=wd,
                           alpha=alpha, damping=d, lr_power=p)
    params = dict(model.named_parameters())
    matrices = ["0.weight", "3.weight", "5.weight"]  # conv kernel, wide and tall linear; 7 is the head
    assert sorted(n for g in opt.matrix_groups() for n in g["param_names"]) == matrices
    w = {n: params[n].detach().clone() for n in matrices}
    buf = {n: torch.zeros_like(w[n]) for n in matrices}
    head_before = params["7.weight"].detach().clone()
    for step in range(3):
        _loss_grads(model, step)
        for n in matrices:
            buf[n] = mu * buf[n] + params[n].grad
            G = buf[n].reshape(buf[n].shape[0], -1)
            U, S, Vh = torch.linalg.svd(G / torch.linalg.matrix_norm(G), full_matrices=False)
            delta = (U * (S / (S**alpha + d))) @ Vh
            scale = (G.shape[0] / G.shape[1]) ** p
            w[n] = w[n] * (1 - lr * wd) - lr * scale * delta.reshape(w[n].shape)
        opt.step()
    for n in matrices:
        torch.testing.assert_close(params[n].detach(), w[n], atol=1e-12, rtol=0)
    assert not torch.equal(params["7.weight"], head_before)  # the head went to the AdamW side-car
    assert opt.step_metrics()["spectral_time_s"] > 0  # the metrics hook, from the base


def _sharded_worker(rank: int, world: int, port: int, out_dir: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    model = _tiny()
    opt = optimizers.build("layerwise_spectral_newton", model, distribution="sharded", bucket_cap_mb=1e-4)
    for step in range(steps):
        _loss_grads(model, step)  # the same gradients on both ranks: one data-parallel step
        opt.step()
    state = opt.state_dict()  # a collective: the owners' buffers, gathered on every rank
    out = {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
           "owners": list(opt.sharding.owners), "owned": sorted(opt.sharding.owned_indices()),
           "local_state": sum(1 for p in opt.matrix_params() if opt.state[p]),
           "state": state["state"], "metrics": opt.step_metrics()}
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)
    end_rank()


def test_plugin_matrix_optimizer_sharded_over_two_ranks_equals_its_single_process_run(
    example_plugin: Path, tmp_path: Path
) -> None:
    steps = 4
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_sharded_worker, args=(2, port, str(tmp_path), steps), nprocs=2, join=True)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same kernels, the same rounding
    try:
        model = _tiny()
        single = optimizers.build("layerwise_spectral_newton", model)
        for step in range(steps):
            _loss_grads(model, step)
            single.step()
        single_state = single.state_dict()["state"]
    finally:
        torch.set_num_threads(threads)
    r0, r1 = ranks
    assert set(r0["owners"]) == {0, 1} and r0["owners"] == r1["owners"]  # both ranks do matrix work
    assert sorted(r0["owned"] + r1["owned"]) == [0, 1, 2]
    assert [r["local_state"] for r in ranks] == [len(r["owned"]) for r in ranks]  # buffers on owners only
    for r in ranks:
        assert r["metrics"]["bytes_communicated"] > 0
        for name, value in model.named_parameters():
            torch.testing.assert_close(r["params"][name], value.detach(), atol=1e-12, rtol=0)
            assert torch.equal(r["params"][name], r0["params"][name])  # replicas identical
        # The checkpoint gathered from the shards holds the single-process state.
        assert r["state"].keys() == single_state.keys()
        for key, entry in single_state.items():
            for field, tensor in entry.items():
                torch.testing.assert_close(r["state"][key][field], tensor, atol=1e-12, rtol=0)


# --- models and datasets --------------------------------------------------------------------------


def test_plugin_model_and_dataset_make_a_workload(example_plugin: Path) -> None:
    cfg = WorkloadConfig(model="specbench_example_plugin.models:mlp", dataset="stripes",
                         model_args={"hidden": 8, "depth": 1}, dataset_args={"size": 100, "image_size": 6})
    workload = Workload.load(cfg, seed=3)
    assert workload.task.input_shape == (1, 6, 6) and workload.task.num_classes == 4
    assert workload.data.sizes() == {"train": 70, "val": 15, "test": 15}
    model = workload.build_model(seed=3)
    assert sum(p.numel() for p in model.parameters()) == (36 * 8 + 8) + (8 * 4 + 4)
    x, y = workload.split("train")[0]
    assert x.shape == (1, 6, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert math.isfinite(workload.loss(model(x[None]), y[None]).item())
    # The data follow the seed: the same on every rank and attempt, different for another seed.
    args = {"size": 100, "image_size": 6}
    first = data.load_dataset("stripes", args, seed=0).fingerprint
    assert first == data.load_dataset("stripes", args, seed=0).fingerprint
    assert first != data.load_dataset("stripes", args, seed=1).fingerprint


def test_what_a_factory_returns_is_checked_at_build_time() -> None:
    from bench.data import TaskInfo

    task = TaskInfo(kind="classification", num_classes=2, input_shape=(1, 2, 2))
    assert models.check_spec("test_plugins:lying_model_factory") is None  # its annotation says nn.Module
    with pytest.raises(TypeError, match="plug-in 'test_plugins:lying_model_factory' returned int, not a torch.nn.Module"):
        models.build_model("test_plugins:lying_model_factory", task, {})


def test_a_module_path_plugin_gets_a_path_safe_trial_id(example_plugin: Path, write_yaml) -> None:
    from launchers.gate import check_sweep

    (trial,) = check_sweep(write_yaml(tiny_sweep(optimizers=[{"name": EXAMPLE_OPT}])), here=False).trials
    assert trial.optimizer == EXAMPLE_OPT and trial.optimizer_entry == EXAMPLE_OPT
    assert re.fullmatch(r"specbench_example_plugin\.optimizer_LayerwiseSpectralNewton-[0-9a-f]{8}", trial.trial_id)


# --- refusals: exit 2, every problem named, before anything starts ---------------------------------


def test_bad_plugins_are_refused_at_validation_with_exit_2(example_plugin: Path, write_yaml, tmp_path: Path,
                                                           capsys, monkeypatch) -> None:
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = tiny_sweep(
        workloads=[
            {"model": "specbench_example_plugin.data:stripes", "dataset": "stripes"},  # a dataset as a model
            {"model": "mlp", "dataset": "stripes", "dataset_args": {"size": 10}},  # below the signature's bound
            {"model": "mlp", "dataset": "specbench_example_plugin.models:mlp"},  # a model as a dataset
        ],
        optimizers=[
            {"name": "no_such_package.optim:Fast"},
            {"name": "raising_plugin:Opt"},
            {"name": "torch.nn:Linear"},
            {"name": "test_plugins:not_an_optimizer_factory"},
            {"name": "os:system"},
            {"name": "torch.optim:SGD.step"},
            {"name": "layerwise_spectral_newton", "settings": {"lr_powr": 1.0}},
            {"name": EXAMPLE_OPT, "settings": {"lr": "0.1"}},
            {"name": "test_plugins:full_matrix_factory"},
        ],
    )
    doc["training"]["zero_stage"] = 1
    storage = tmp_path / "results"
    code = cli.main(["sweep", str(write_yaml(doc)), "--storage", str(storage)])
    err = capsys.readouterr().err
    assert code == 2
    expected = [
        "workloads[0].model: model 'specbench_example_plugin.data:stripes': it returns DataBundle, not a torch.nn.Module",
        "workloads[1].dataset_args: dataset 'stripes': size: Input should be greater than or equal to 40 (got 10)",
        "workloads[2].dataset: dataset 'specbench_example_plugin.models:mlp': it returns Module, not a bench.data.DataBundle",
        "optimizers[0].name: optimizer 'no_such_package.optim:Fast': cannot import module 'no_such_package.optim' "
        "(ModuleNotFoundError: No module named 'no_such_package')",
        "optimizers[1].name: optimizer 'raising_plugin:Opt': importing module 'raising_plugin' failed: "
        "RuntimeError: boom at import",
        "optimizers[2].name: optimizer 'torch.nn:Linear': it is the class Linear, not an optimizer",
        "optimizers[3].name: optimizer 'test_plugins:not_an_optimizer_factory': it returns Module, not a "
        "torch.optim.Optimizer",
        "optimizers[4].name: optimizer 'os:system': a factory must declare what it returns: annotate it -> "
        "torch.optim.Optimizer",
        "optimizers[5].name: optimizer 'torch.optim:SGD.step': 'SGD.step' is not an attribute name (one attribute "
        "name: no dotted walk)",
        "optimizers[6].settings.lr_powr: unknown key",
        "optimizers[7].settings.lr: expected a number, got the string '0.1'",
        # A full-matrix optimizer outside the MatrixOptimizer frame gets no whole matrices at ZeRO ≥ 1
        # (the example plug-in, a MatrixOptimizer, is accepted there).
        "optimizers[8] (test_plugins:full_matrix_factory): needs whole gradient matrices, but training.zero_stage=1",
    ]
    problems = [line.removeprefix("  - ") for line in err.splitlines() if line.startswith("  - ")]
    for text in expected:
        assert any(p.startswith(text) for p in problems), f"{text!r} not in:\n{err}"
    assert len(problems) == len(expected), err
    assert "Traceback" not in err and not storage.exists()  # refused before anything was created


def test_a_reference_is_a_module_path_and_one_attribute_name() -> None:
    for ref, reason in [
        ("os.path:join.__globals__", "no dotted walk"),
        ("../evil:f", "not a module path"),
        ("/tmp/x.py:f", "not a module path"),
        ("json:loads()", "not an attribute name"),
        ("__import__('os'):system", "not a module path"),
        ("json:", "not an attribute name"),
    ]:
        problem = parse_reference(ref)
        assert isinstance(problem, str) and reason in problem, (ref, problem)
    before = set(sys.modules)
    with pytest.raises(ResolutionError, match="no dotted walk"):
        import_reference("specbench_example_never_imported:attr.sub")
    assert set(sys.modules) == before  # a malformed reference imports nothing
    import json

    assert import_reference("json:loads").obj is json.loads


# --- listing ---------------------------------------------------------------------------------------


def test_list_shows_plugins_with_their_origin(example_plugin: Path, capsys) -> None:
    assert cli.main(["list", "optimizers"]) == 0
    out = capsys.readouterr().out
    section = out.split("plug-ins (entry points of specbench.optimizers", 1)[1]
    assert "layerwise_spectral_newton  Spectral Newton with a per-layer learning rate" in section
    assert f"from: entry point of specbench-example-plugin 0.1.0 ({EXAMPLE_OPT})" in section
    assert "requires_full_matrices: true" in section and "      lr_power: 0.5" in section
    assert cli.main(["list", "datasets"]) == 0
    out = capsys.readouterr().out.split("plug-ins (entry points of specbench.datasets", 1)[1]
    assert "stripes  Four-way orientation classification" in out
    assert "from: entry point of specbench-example-plugin 0.1.0 (specbench_example_plugin.data:stripes)" in out
    assert "size: examples in all three splits together (int, default 1200)" in out
    assert cli.main(["list", "models"]) == 0
    out = capsys.readouterr().out.split("plug-ins (entry points of specbench.models", 1)[1]
    assert "mlp  A ReLU MLP" in out and "(specbench_example_plugin.models:mlp)" in out
