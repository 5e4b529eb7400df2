"""The matrix-optimizer frame (optimizers.matrix_base, optimizers.settings.MatrixSettings).

Each behaviour the frame owns is tested once, parametrised over the four built-in matrix
optimizers and a minimal plug-in that writes only its per-matrix update (:class:`SignMomentum`):
constructor defaults, the AdamW side-car against ``torch.optim.AdamW``, checkpoints, metrics,
ZeRO flat partitions, engines that swap parameters. Sharding over two gloo ranks, for the same
five, is in test_optimizers_distributed.py; each optimizer's own math in test_optimizers_build.py
(Spectral Newton) and test_optimizers_baselines.py (Muon, Shampoo, SOAP).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from pydantic import Field
from test_optimizers_build import TinyNet  # conv kernel, two linear matrices, norm, biases, head
from torch import nn

import optimizers
from optimizers import MatrixOptimizer, MatrixSettings, matrix_spec
from optimizers.matrix_base import FRAME_SETTINGS
from optimizers.settings import AdamWSettings


class SignMomentumSettings(MatrixSettings):
    """Settings of the plug-in example."""

    lr: float = Field(0.01, gt=0, description="Learning rate of the matrix group.")
    momentum: float = Field(0.9, ge=0, lt=1, description="μ of buf ← μ·buf + g.")


class SignMomentum(MatrixOptimizer):
    """A plug-in written against the public base: buf ← μ·buf + g, Δ = sign(buf); nothing else."""

    settings_model = SignMomentumSettings

    def init_state(self, grad: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"buf": torch.zeros_like(grad)}

    def update(self, grad: torch.Tensor, state: dict[str, Any], group: Mapping[str, Any]) -> torch.Tensor:
        state["buf"].mul_(group["momentum"]).add_(grad)
        return state["buf"].sign()


CLASSES: dict[str, type[MatrixOptimizer]] = {
    "spectral_newton": optimizers.SpectralNewton,
    "muon": optimizers.Muon,
    "shampoo": optimizers.Shampoo,
    "soap": optimizers.SOAP,
    "sign_momentum": SignMomentum,
}


def make(name: str, model: nn.Module, **settings: Any) -> MatrixOptimizer:
    """``optimizers.build`` for the built-ins; the plug-in through its registry entry (not registered
    globally, so the registry listing stays the built-ins')."""
    if name in optimizers.available():
        return optimizers.build(name, model, **settings)
    spec = matrix_spec(name, CLASSES[name])
    return spec.builder(model, spec.settings.model_validate(settings), None)


MATRICES = ("conv.weight", "wide.weight", "tall.weight")


def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().double()


def grads(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64, generator=gen)
    y = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()


# --- settings: one source of truth ---------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSES)
def test_constructor_defaults_are_the_settings_defaults(name: str) -> None:
    cls = CLASSES[name]
    # No default is written in a constructor signature, so none can drift from the settings model.
    assert all(p.default is inspect.Parameter.empty for p in inspect.signature(cls.__init__).parameters.values())
    opt = cls(list(net().named_parameters()))
    defaults = cls.settings_model()
    (matrix,) = opt.matrix_groups()
    (adamw,) = [g for g in opt.param_groups if g["kind"] == "adamw"]
    own = {k: v for k, v in defaults.model_dump().items() if k not in FRAME_SETTINGS}
    assert {k: matrix[k] for k in own} == own
    assert (adamw["lr"], adamw["betas"], adamw["eps"]) == (defaults.adamw_lr, defaults.adamw_betas, defaults.adamw_eps)
    assert adamw["weight_decay"] == defaults.weight_decay
    assert opt.sharding.mode == defaults.distribution
    assert opt.sharding.cap_bytes == int(defaults.bucket_cap_mb * 2**20)
    if name in optimizers.available():  # the registry validates with the same model
        assert optimizers.settings_model(name) is cls.settings_model


def test_constructor_validates_with_the_settings_model() -> None:
    params = list(net().named_parameters())
    with pytest.raises(ValueError, match=r"Muon\.lr: must be > 0"):
        optimizers.Muon(params, lr=-1.0)
    with pytest.raises(ValueError, match=r"Shampoo\.learning_rate: unknown setting"):
        optimizers.Shampoo(params, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"SOAP\.distribution: must be one of sharded, redundant"):
        optimizers.SOAP(params, distribution="zero3")


def test_a_plug_in_must_declare_settings_with_a_learning_rate() -> None:
    with pytest.raises(TypeError, match="settings_model"):

        class NoLearningRate(MatrixOptimizer):
            settings_model = AdamWSettings  # not a MatrixSettings


def test_matrix_spec_reads_the_class() -> None:
    spec = matrix_spec("sign_momentum", SignMomentum)
    assert spec.settings is SignMomentumSettings and spec.requires_full_matrices is True
    assert optimizers.requires_full_matrices("soap") is optimizers.SOAP.requires_full_matrices


# --- the step: update rule, AdamW side-car, grouping ---------------------------------------------


def test_plug_in_gets_the_update_rule_and_grouping_from_the_frame() -> None:
    """W ← W·(1 − lr·λ) − lr·sign(buf) on every matrix (conv kernel included), float64 oracle."""
    lr, mu, wd = 0.05, 0.8, 0.1
    model = net()
    opt = make("sign_momentum", model, lr=lr, momentum=mu, weight_decay=wd)
    assert {n for g in opt.matrix_groups() for n in g["param_names"]} == set(MATRICES)
    params = dict(model.named_parameters())
    w = {n: params[n].detach().clone() for n in MATRICES}
    buf = {n: torch.zeros_like(w[n]) for n in MATRICES}
    for step in range(3):
        grads(model, step)
        for n in MATRICES:
            buf[n] = mu * buf[n] + params[n].grad
            w[n] = w[n] * (1 - lr * wd) - lr * torch.sign(buf[n])
        opt.step()
    for n in MATRICES:
        torch.testing.assert_close(params[n].detach(), w[n], atol=1e-15, rtol=0)


@pytest.mark.parametrize("name", CLASSES)
def test_adamw_side_car_equals_torch_adamw(name: str) -> None:
    model = net()
    ref_net = copy.deepcopy(model)
    opt = make(name, model, weight_decay=0.1, adamw_lr=3e-3, adamw_betas=(0.8, 0.99))
    names = [n for g in opt.param_groups if g["kind"] == "adamw" for n in g["param_names"]]
    assert set(names) == {"conv.bias", "norm.weight", "norm.bias", "wide.bias", "head.weight", "head.bias"}
    ref_params = dict(ref_net.named_parameters())
    ref = torch.optim.AdamW(
        [
            {"params": [ref_params["head.weight"]], "weight_decay": 0.1},
            {"params": [ref_params[n] for n in names if n != "head.weight"], "weight_decay": 0.0},
        ],
        lr=3e-3,
        betas=(0.8, 0.99),
        eps=1e-8,
    )
    params = dict(model.named_parameters())
    for step in range(3):
        with torch.no_grad():  # same matrices, so both nets see the same AdamW gradients
            for n in MATRICES:
                ref_params[n].copy_(params[n])
        grads(model, step)
        grads(ref_net, step)
        opt.step()
        ref.step()
    for n in names:
        torch.testing.assert_close(params[n], ref_params[n], atol=1e-14, rtol=0)


def test_build_takes_explicit_layer_types() -> None:
    model = net()
    types = optimizers.tag_parameters(model) | {"tall.weight": "head"}
    opt = optimizers.build("muon", model, layer_types=types)
    assert "tall.weight" in next(g for g in opt.param_groups if g["name"] == "adamw")["param_names"]
    assert optimizers.build("adamw", model, layer_types=types).param_groups[0]["lr"] == 1e-3


# --- checkpoints, metrics, engines ---------------------------------------------------------------


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3)).double()


PERIODIC = {"shampoo": {"preconditioning_frequency": 2}, "soap": {"precondition_frequency": 2}}


@pytest.mark.parametrize("name", CLASSES)
def test_state_dict_round_trip_resumes_exactly(name: str) -> None:
    model = small_model()
    x, target = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    settings = PERIODIC.get(name, {})
    opt = make(name, model, **settings)

    def train(m: nn.Module, o: torch.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            o.zero_grad()
            ((m(x) - target) ** 2).mean().backward()
            o.step()

    train(model, opt, 3)
    saved = copy.deepcopy(opt.state_dict())
    clone = copy.deepcopy(model)
    resumed = make(name, clone, **settings)
    resumed.load_state_dict(saved)
    train(model, opt, 3)
    train(clone, resumed, 3)
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_restores_hyperparameters_but_not_group_structure() -> None:
    model = small_model()
    opt = make("spectral_newton", model)
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0].update(kind="spectral", name="spectral", lr=0.5)  # e.g. an older checkpoint
    del saved["param_groups"][0]["damping"]  # a hyperparameter it did not store
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["kind"] == "matrix" and opt.param_groups[0]["name"] == "matrix"
    assert opt.param_groups[0]["damping"] == 0.1
    assert opt.param_groups[0]["lr"] == 0.5 and len(opt.matrix_params()) == 2  # conv + hidden linear


@pytest.mark.parametrize("name", CLASSES)
def test_step_metrics_on_one_process(name: str) -> None:
    model = small_model()
    opt = make(name, model)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 2, 4, 4, dtype=torch.float64)).square().mean().backward()
        opt.step()
    metrics = opt.step_metrics()
    extra = {"fallbacks"} if name == "spectral_newton" else set()
    assert set(metrics) == {CLASSES[name].time_metric, "comm_time_s", "load_imbalance", "bytes_communicated"} | extra
    assert metrics[CLASSES[name].time_metric] > 0
    assert metrics["load_imbalance"] == 1.0 and metrics["comm_time_s"] == 0 and metrics["bytes_communicated"] == 0


@pytest.mark.parametrize("name", CLASSES)
def test_zero_flat_partition_is_refused_clearly(name: str) -> None:
    opt = make(name, small_model())
    flat = nn.Parameter(torch.zeros(10, dtype=torch.float64))
    flat.grad = torch.ones(10, dtype=torch.float64)
    opt.matrix_groups()[0]["params"] = [flat]  # what a ZeRO ≥ 1 engine hands the optimizer
    # Without the partition layout (optimizers.deepspeed_zero.initialize) it refuses, never steps a vector.
    with pytest.raises(RuntimeError, match="partition layout.*deepspeed_zero.initialize"):
        opt.step()


@pytest.mark.parametrize("name", CLASSES)
def test_engine_may_swap_parameters_for_same_shaped_copies(name: str) -> None:
    # DeepSpeed's fp16/bf16 wrappers at ZeRO-0 hand the client optimizer fp32 master copies of the
    # parameters after construction (same shapes, new tensors): ownership is by position.
    opt = make(name, small_model())
    masters = []
    for group in opt.param_groups:
        copies = [p.detach().clone().requires_grad_(True) for p in group["params"]]
        group["params"] = copies
        masters += copies
    before = [m.detach().clone() for m in masters]
    for _ in range(2):  # SOAP's first step only initialises its eigenbases
        for m in masters:
            m.grad = torch.randn_like(m)
        opt.step()
    assert all(not torch.equal(b, m) for b, m in zip(before, masters, strict=True) if m.ndim >= 2)
