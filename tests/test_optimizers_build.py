"""SpectralNewton, AdamW and the registry (optimizers.spectral_newton, .adamw, .registry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import optimizers
from optimizers import spectral_newton as sn_module
from optimizers.alpha_policy import DEFAULT_ALPHA_TABLE
from optimizers.param_groups import assign_parameters, build_param_groups, check_coverage
from optimizers.spectral_newton import SpectralNewton


def t_oracle(G: torch.Tensor, alpha: float, d: float) -> torch.Tensor:
    """U diag(σ/(σ^α + d)) Vᵀ of one matrix with numpy's SVD in float64 (independent oracle)."""
    U, s, Vt = np.linalg.svd(G.detach().double().numpy(), full_matrices=False)
    return torch.from_numpy((U * (s / (s**alpha + d))) @ Vt)


class TinyNet(nn.Module):
    """A conv (reshaped out × in·kh·kw), a wide and a tall linear, norm, bias and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.norm = nn.LayerNorm(16)
        self.wide = nn.Linear(16, 6)
        self.tall = nn.Linear(6, 9, bias=False)
        self.head = nn.Linear(9, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)  # 4 × 2 × 2 = 16
        return self.head(torch.tanh(self.tall(torch.tanh(self.wide(self.norm(h))))))


def _grads(model: nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    y = torch.randn(5, 3, dtype=torch.float64)
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().double()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg)


# --- one step against an independent computation ---------------------------------------------


@pytest.mark.parametrize("method", ["svd", "gram", "solve", "polar"])
def test_one_step_equals_p_minus_lr_T_grad(net: TinyNet, method: str) -> None:
    opt = optimizers.build("spectral_newton", net, lr=0.05, momentum=0.0, weight_decay=0.0, method=method)
    _grads(net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    opt.step()
    after = dict(net.named_parameters())
    for name in ("conv.weight", "wide.weight", "tall.weight"):
        g = grads[name]
        expected = before[name] - 0.05 * t_oracle(g.reshape(g.shape[0], -1), 2.0, 0.1).reshape(g.shape)
        torch.testing.assert_close(after[name].detach(), expected, atol=1e-12, rtol=0)
    assert opt.step_metrics()["fallbacks"] == 0.0


def test_conv_update_uses_out_by_in_kh_kw(net: TinyNet) -> None:
    # σ/(σ^α+d) is not invariant to how a 4-D kernel is flattened: out × (in·kh·kw) differs from
    # e.g. (out·in) × (kh·kw), so this pins the paper's convention (docs/science/quantities.md).
    opt = SpectralNewton.from_model(net, lr=1.0, momentum=0.0, alpha=1.5, method="gram")
    _grads(net)
    g = net.conv.weight.grad.detach().clone()
    w0 = net.conv.weight.detach().clone()
    opt.step()
    expected = w0 - t_oracle(g.reshape(4, 18), 1.5, 0.1).reshape(4, 2, 3, 3)
    torch.testing.assert_close(net.conv.weight.detach(), expected, atol=1e-12, rtol=0)
    wrong = w0 - t_oracle(g.reshape(8, 9), 1.5, 0.1).reshape(4, 2, 3, 3)
    assert (net.conv.weight.detach() - wrong).abs().max() > 1e-6


def test_nesterov_momentum_weight_decay_and_rms_match(net: TinyNet) -> None:
    lr, mu, wd, rho = 0.1, 0.9, 0.05, 0.2
    opt = SpectralNewton.from_model(net, lr=lr, momentum=mu, weight_decay=wd, rms_match=rho, alpha=1.43)
    w = net.tall.weight.detach().clone()
    buf = torch.zeros_like(w)
    for step in range(3):
        _grads(net, seed=step)
        g = net.tall.weight.grad.detach().clone()
        opt.step()
        buf = mu * buf + g
        u = g + mu * buf
        delta = t_oracle(u, 1.43, 0.1)
        delta = delta * rho / delta.pow(2).mean().sqrt()
        w = w * (1 - lr * wd) - lr * delta
        torch.testing.assert_close(net.tall.weight.detach(), w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("normalize", ["frobenius", "spectral"])
def test_normalisation_divides_before_T(net: TinyNet, normalize: str) -> None:
    opt = SpectralNewton.from_model(net, lr=1.0, momentum=0.0, normalize=normalize, power_iters=50)
    _grads(net)
    g = net.wide.weight.grad.detach().clone()
    w0 = net.wide.weight.detach().clone()
    opt.step()
    scale = torch.linalg.matrix_norm(g, ord="fro" if normalize == "frobenius" else 2)
    torch.testing.assert_close(net.wide.weight.detach(), w0 - t_oracle(g / scale, 2.0, 0.1), atol=1e-10, rtol=0)


def test_equal_shapes_are_batched_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(4, 2))
    calls: list[tuple[int, ...]] = []
    real = sn_module.spectral_transform_with_stats

    def spy(G, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(tuple(G.shape))
        return real(G, *args, **kwargs)

    monkeypatch.setattr(sn_module, "spectral_transform_with_stats", spy)
    opt = SpectralNewton.from_model(model, alpha_policy="by_layer_type")
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    # 3 × (8×8) in one call; the 4×8 layer (oriented tall: 8×4) alone; the head is AdamW's.
    assert sorted(calls) == [(1, 8, 4), (3, 8, 8)]
    assert opt.step_metrics()["spectral_time_s"] > 0


# --- α policies --------------------------------------------------------------------------------


def test_alpha_policies(gpt2: nn.Module) -> None:
    opt = SpectralNewton.from_model(gpt2, alpha_policy="by_layer_type", alpha_table={"mlp_up": 0.5})
    assert opt.alpha_for("transformer.h.0.attn.c_attn.weight") == 1.43
    assert opt.alpha_for("transformer.h.0.attn.c_proj.weight") == 1.17
    assert opt.alpha_for("transformer.h.0.mlp.c_fc.weight") == 0.5
    assert opt.alpha_for("transformer.h.0.mlp.c_proj.weight") == 1.15
    measured = SpectralNewton.from_model(gpt2, alpha_policy="measured")
    measured.set_measured_alpha({"transformer.h.0.mlp.c_fc.weight": 1.9})
    assert measured.alpha_for("transformer.h.0.mlp.c_fc.weight") == 1.9
    assert measured.alpha_for("transformer.h.1.mlp.c_fc.weight") == 0.84  # table fallback
    with pytest.raises(ValueError, match="not a parameter"):
        measured.set_measured_alpha({"nope.weight": 1.0})
    # A fit that is not finite and > 0 is skipped with its reason; the previous α stays.
    skipped = measured.set_measured_alpha({"transformer.h.0.mlp.c_fc.weight": -1.0,
                                           "transformer.h.0.mlp.c_proj.weight": float("nan"),
                                           "transformer.h.0.attn.c_proj.weight": 0.7})
    assert set(skipped) == {"transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"}
    assert "> 0" in skipped["transformer.h.0.mlp.c_fc.weight"]
    assert measured.alpha_for("transformer.h.0.mlp.c_fc.weight") == 1.9
    assert measured.alpha_for("transformer.h.0.mlp.c_proj.weight") == 1.15  # still the table's
    assert measured.alpha_for("transformer.h.0.attn.c_proj.weight") == 0.7
    assert measured.measures_alpha and not SpectralNewton.from_model(gpt2).measures_alpha
    # Only the measured policy takes a probe's α: under the others a set value is never used.
    for policy, want in (("by_layer_type", 0.84), ("fixed", 1.0)):
        other = SpectralNewton.from_model(gpt2, alpha_policy=policy, alpha=1.0)
        other.set_measured_alpha({"transformer.h.0.mlp.c_fc.weight": 1.9})
        assert other.alpha_for("transformer.h.0.mlp.c_fc.weight") == want
    state = measured.state_dict()
    fresh = SpectralNewton.from_model(gpt2, alpha_policy="measured")
    fresh.load_state_dict(state)
    assert fresh.alpha_for("transformer.h.0.mlp.c_fc.weight") == 1.9


SOLVE_CASES = [
    ({"alpha": 1.5}, False),
    ({"alpha_policy": "by_layer_type"}, False),  # the LM types of the table are not 2
    ({"alpha_policy": "measured"}, False),  # known only during training
    ({"alpha_policy": "by_layer_type", "alpha_table": {t: 2.0 for t, a in DEFAULT_ALPHA_TABLE.items() if a != 2}}, True),
    ({"alpha_policy": "by_layer_type", "alpha": 1.5,  # type `other` (not in the table) would get alpha 1.5
      "alpha_table": {t: 2.0 for t, a in DEFAULT_ALPHA_TABLE.items() if a != 2}}, False),
    ({"alpha_policy": "fixed", "alpha": 2.0}, True),
]


@pytest.mark.parametrize(("settings", "valid"), SOLVE_CASES, ids=lambda x: str(x))
def test_solve_needs_alpha_2_one_rule_everywhere(gpt2: nn.Module, settings: dict, valid: bool) -> None:
    """Config validation, optimizers.build and the constructor apply the same rule: the model is
    unknown at config time, so every layer type that can reach the matrix group must get α = 2."""
    settings = {"method": "solve", **settings}
    problems = optimizers.validate_settings("spectral_newton", settings)
    assert (problems == []) is valid and all("alpha = 2" in p for p in problems)
    for make in (lambda: optimizers.build("spectral_newton", gpt2, **settings),
                 lambda: SpectralNewton.from_model(gpt2, **settings)):
        if valid:
            make()
        else:
            with pytest.raises(ValueError, match="alpha = 2"):
                make()


# --- grouping ----------------------------------------------------------------------------------


def _assert_exact_cover(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_groups_cover_resnet18(resnet18: nn.Module) -> None:
    opt = optimizers.build("spectral_newton", resnet18)
    _assert_exact_cover(resnet18, opt)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert "fc.weight" in by_name["adamw"]["param_names"]
    assert "bn1.weight" in by_name["adamw_no_decay"]["param_names"]
    assert by_name["adamw_no_decay"]["weight_decay"] == 0.0
    matrix = by_name["matrix"]
    assert len(matrix["params"]) == 20 and all(p.ndim == 4 for p in matrix["params"])
    assert by_name["matrix"]["lr"] == 0.02 and by_name["adamw"]["lr"] == 1e-3
    _assert_exact_cover(resnet18, optimizers.build("adamw", resnet18))


def test_groups_cover_gpt2_with_tied_head(gpt2: nn.Module) -> None:
    opt = optimizers.build("spectral_newton", gpt2)
    _assert_exact_cover(gpt2, opt)
    matrix = next(g for g in opt.param_groups if g["kind"] == "matrix")
    assert sorted(set(matrix["layer_types"])) == ["attn_out", "attn_qkv", "mlp_down", "mlp_up"]
    # Moving embeddings to the matrix side is a setting, not a code change.
    opt2 = optimizers.build("spectral_newton", gpt2, adamw_types=["bias", "norm"])
    matrix2 = next(g for g in opt2.param_groups if g["kind"] == "matrix")
    assert "transformer.wte.weight" in matrix2["param_names"]


def test_missing_or_duplicated_parameter_is_named(net: TinyNet) -> None:
    assignment = assign_parameters(net)
    del assignment["tall.weight"]
    with pytest.raises(ValueError, match="'tall.weight' is in no param group"):
        build_param_groups(net, assignment)
    groups = build_param_groups(net, assign_parameters(net))
    groups[0]["params"] = groups[0]["params"][1:]
    missing = groups[0]["param_names"].pop(0)
    with pytest.raises(ValueError, match=f"'{missing}' is in no param group"):
        check_coverage(net, groups)
    w = net.tall.weight
    dup = [
        {"params": [w], "param_names": ["tall.weight"], "kind": "matrix", "name": "matrix"},
        {"params": [w], "param_names": ["tall.weight"], "kind": "adamw", "name": "adamw"},
    ]
    with pytest.raises(ValueError, match="'tall.weight' is in more than one param group"):
        SpectralNewton(dup)
    with pytest.raises(ValueError, match="'head.bias'.*not a matrix"):
        SpectralNewton([{"params": [net.head.bias], "param_names": ["head.bias"], "kind": "matrix"}])


def test_plain_parameter_list_and_lr_scheduler(net: TinyNet) -> None:
    opt = SpectralNewton(net.parameters(), lr=0.1, adamw_lr=0.01)
    kinds = {g["kind"]: g for g in opt.param_groups}
    assert all(p.ndim >= 2 for p in kinds["matrix"]["params"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    _grads(net)
    opt.step()
    sched.step()
    assert kinds["matrix"]["lr"] == pytest.approx(0.05) and kinds["adamw"]["lr"] == pytest.approx(0.005)


# --- registry ----------------------------------------------------------------------------------


def test_registry_listing() -> None:
    assert optimizers.available() == ["adamw", "muon", "muon_deepspeed", "shampoo", "soap", "spectral_newton"]
    for name in ("spectral_newton", "muon", "shampoo", "soap"):
        assert optimizers.requires_full_matrices(name) is True
    assert optimizers.requires_full_matrices("adamw") is False
    assert optimizers.requires_full_matrices("muon_deepspeed") is False  # DeepSpeed partitions it itself
    for name in optimizers.available():
        model = optimizers.settings_model(name)
        assert model.model_config["extra"] == "forbid"
        rows = optimizers.describe(name)
        assert {"lr", "momentum", "weight_decay"} <= {r[0] for r in rows}
        assert all(desc for _, _, desc in rows)
        assert optimizers.validate_settings(name, {}) == []
    defaults = {f: d for f, d, _ in optimizers.describe("spectral_newton")}
    assert defaults["method"] == "gram" and defaults["alpha"] == 2.0 and defaults["damping"] == 0.1
    assert defaults["momentum"] == 0.95 and defaults["nesterov"] is True and defaults["rms_match"] is None


def test_validate_settings_messages() -> None:
    v = optimizers.validate_settings
    assert v("spectral_newton", {"method": "qr"}) == [
        "optimizers.spectral_newton.method: must be one of svd, gram, solve, polar (got 'qr')"
    ]
    (msg,) = v("x", {})
    assert msg.startswith("unknown optimizer 'x'; available: adamw, muon, muon_deepspeed, shampoo, soap, spectral_newton; plug-ins: ")
    (msg,) = v("spectral_newton", {"learning_rate": 0.1})
    assert msg.startswith("optimizers.spectral_newton.learning_rate: unknown setting") and "lr" in msg
    assert v("adamw", {"lr": -1}) == ["optimizers.adamw.lr: must be > 0.0 (got -1)"]
    (msg,) = v("spectral_newton", {"method": "solve", "alpha": 1.5})
    assert msg.startswith("optimizers.spectral_newton: ") and "alpha = 2" in msg
    (msg,) = v("spectral_newton", {"adamw_types": ["bias", "dense"]})
    assert "adamw_types" in msg and "'dense'" in msg
    assert v("spectral_newton", {"normalize": "l2"}, prefix="optimizers[1].settings") == [
        "optimizers[1].settings.normalize: must be one of none, frobenius, spectral (got 'l2')"
    ]
    with pytest.raises(ValueError, match="method: must be one of"):
        optimizers.build("spectral_newton", nn.Linear(2, 2), method="qr")
    with pytest.raises(KeyError, match="unknown optimizer"):
        optimizers.settings_model("sgd")


# --- every optimizer lowers a loss -------------------------------------------------------------


class LeastSquares(nn.Module):
    """min_W ‖X W − Y‖² / N: convex; W is a plain 2-D parameter (layer type 'other' → spectral).

    The target is scaled like a network layer (entries ~0.1), so gradient singular values are
    ~0.01–0.1 as in training: T's behaviour depends on the scale of G relative to d (docs/science/spectral_newton.md;
    with σ ≫ √d, α = 2 gives T ≈ 1/σ and tiny steps, which is the model, not a bug).
    """

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))


SETTINGS = [
    ("adamw", {"lr": 0.05}),
    ("spectral_newton", {}),
    ("spectral_newton", {"method": "solve"}),
    ("spectral_newton", {"method": "polar", "alpha": 1.43}),
    ("spectral_newton", {"method": "svd", "rms_match": 0.2, "normalize": "frobenius"}),
    ("spectral_newton", {"alpha_policy": "by_layer_type", "normalize": "spectral"}),
]


@pytest.mark.parametrize(("name", "settings"), SETTINGS, ids=lambda x: str(x))
def test_lowers_least_squares_loss(name: str, settings: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 6, dtype=torch.float64, generator=gen)
    Y = X @ (0.1 * torch.randn(6, 4, dtype=torch.float64, generator=gen))
    model = LeastSquares()
    opt = optimizers.build(name, model, **settings)
    losses = []
    for _ in range(30):
        loss = ((X @ model.W - Y) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


CNN_SETTINGS = [
    ("adamw", {"lr": 0.01}),
    ("spectral_newton", {"lr": 0.1}),
    ("spectral_newton", {"lr": 0.1, "method": "solve"}),
    ("spectral_newton", {"lr": 0.1, "method": "polar", "alpha_policy": "by_layer_type"}),
]


def _tiny_cnn(classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes),
    )


@pytest.mark.parametrize(("name", "settings"), CNN_SETTINGS, ids=lambda x: str(x))
def test_lowers_tiny_cnn_loss_on_random_data(name: str, settings: dict) -> None:
    torch.manual_seed(0)
    model = _tiny_cnn()
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 4, (32,))
    opt = optimizers.build(name, model, **settings)
    first = None
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    if name == "spectral_newton":
        metrics = opt.step_metrics()
        assert set(metrics) == {
            "spectral_time_s", "fallbacks", "comm_time_s", "load_imbalance", "bytes_communicated"
        } and metrics["fallbacks"] == 0.0
        assert metrics["load_imbalance"] == 1.0 and metrics["bytes_communicated"] == 0.0


@pytest.mark.parametrize("name", ["adamw", "spectral_newton"])
def test_defaults_train_the_digits_cnn(name: str) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = _tiny_cnn(classes=10)
    opt = optimizers.build(name, model)  # defaults only
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = nn.functional.cross_entropy(model(X[:1500]), y[:1500]).item()
    for _ in range(8):
        perm = torch.randperm(1500, generator=gen)
        for i in range(0, 1500, 50):
            idx = perm[i : i + 50]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        end = nn.functional.cross_entropy(model(X[:1500]), y[:1500]).item()
        acc = (model(X[1500:]).argmax(1) == y[1500:]).float().mean().item()
    assert end < 0.5 * start
    if name == "spectral_newton":
        assert acc > 0.8, acc
