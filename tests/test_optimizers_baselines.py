"""The matrix baselines Muon, Shampoo and SOAP (optimizers.muon, .shampoo, .soap).

Each is checked in float64 against a literal transcription of its published algorithm written
here with numpy (independent of the code under test), then trained briefly on a convex problem
and on the suite's built-in CNN with its default settings.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import optimizers
from optimizers.shampoo import _eigh, inverse_root

MATRIX_OPTIMIZERS = ("muon", "shampoo", "soap")


class LeastSquares(nn.Module):
    """min_W ‖X·vec(W) − Y‖²/N with W a plain parameter (layer type 'other' → matrix group)."""

    def __init__(self, shape: tuple[int, ...] = (6, 4), seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(0.1 * torch.randn(*shape, dtype=torch.float64, generator=gen))
        k = int(np.prod(shape))
        self.X = torch.randn(40, k, dtype=torch.float64, generator=gen)
        self.Y = self.X @ (0.1 * torch.randn(k, dtype=torch.float64, generator=gen))

    def loss(self) -> torch.Tensor:
        return ((self.X @ self.W.reshape(-1) - self.Y) ** 2).mean()

    def np_grad(self, W: np.ndarray) -> np.ndarray:
        X, Y = self.X.numpy(), self.Y.numpy()
        return (2.0 / X.shape[0] * X.T @ (X @ W.reshape(-1) - Y)).reshape(W.shape)


def run_optimizer(model: LeastSquares, opt: torch.optim.Optimizer, steps: int) -> np.ndarray:
    for _ in range(steps):
        opt.zero_grad()
        model.loss().backward()
        opt.step()
    return model.W.detach().numpy().copy()


def mpow(S: np.ndarray, power: float) -> np.ndarray:
    """S^power for a symmetric positive definite S."""
    w, V = np.linalg.eigh(0.5 * (S + S.T))
    return (V * w**power) @ V.T


def mode_product(T: np.ndarray, M: np.ndarray, mode: int) -> np.ndarray:
    """T ×_mode M."""
    return np.moveaxis(np.tensordot(M, T, axes=(1, mode)), 0, mode)


def unfold(T: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(T, mode, 0).reshape(T.shape[mode], -1)


# --- Muon: timm's implementation agrees with torch.optim.Muon ----------------------------------


class TwoMatrices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(24, 10))
        self.b = nn.Parameter(torch.randn(7, 30))


@pytest.mark.parametrize(
    ("adjust", "torch_adjust"), [("original", None), ("match_rms_adamw", "match_rms_adamw"), ("spectral", "spectral_unclamped")]
)
def test_muon_equals_torch_muon_on_2d_weights(adjust: str, torch_adjust: str | None) -> None:
    torch.manual_seed(0)
    model = TwoMatrices()
    ref_params = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
    ours = optimizers.build("muon", model, lr=0.05, momentum=0.9, weight_decay=0.1, adjust_lr=adjust)
    ref = torch.optim.Muon(ref_params, lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True, adjust_lr_fn=torch_adjust)
    assert ours.param_groups[0]["kind"] == "matrix" and len(ours.param_groups) == 1
    for _ in range(4):
        for p, r in zip(model.parameters(), ref_params, strict=True):
            g = torch.randn_like(p)
            p.grad, r.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, r in zip(model.parameters(), ref_params, strict=True):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-6, atol=1e-7)  # in fact bitwise
        assert torch.equal(p.detach(), r.detach())


def test_muon_treats_conv_kernels_as_out_by_in_kh_kw() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 8, 3, bias=False)
    ref = nn.Parameter(conv.weight.detach().reshape(8, 36).clone())
    ours = optimizers.build("muon", conv, lr=0.05)
    ref_opt = torch.optim.Muon([ref], lr=0.05, momentum=0.95, weight_decay=0.0, nesterov=True)
    for _ in range(3):
        g = torch.randn(8, 4, 3, 3)
        conv.weight.grad, ref.grad = g.clone(), g.reshape(8, 36).clone()
        ours.step()
        ref_opt.step()
    assert torch.equal(conv.weight.detach().reshape(8, 36), ref.detach())


def test_muon_step_is_timms_muon_step() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.Flatten(), nn.Linear(6 * 4 * 4, 12, bias=False))
    ref_model = copy.deepcopy(model)
    ours = optimizers.build("muon", model, adamw_types=[], lr=0.03, weight_decay=0.05, adjust_lr="match_rms_adamw")
    ref = timm.optim.Muon([{"params": list(ref_model.parameters()), "use_muon": True}], lr=0.03, weight_decay=0.05,
                          momentum=0.95, nesterov=True, ns_coefficients="original", adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        for p, r in zip(model.parameters(), ref_model.parameters(), strict=True):
            g = torch.randn_like(p)
            p.grad, r.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, r in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, r)


def test_muon_float32_newton_schulz_is_close_to_bfloat16() -> None:
    torch.manual_seed(3)
    a, b = TwoMatrices(), TwoMatrices()
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    oa = optimizers.build("muon", a, lr=0.05)
    ob = optimizers.build("muon", b, lr=0.05, ns_dtype="float32")
    for _ in range(3):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    for p, q, p0 in zip(a.parameters(), b.parameters(), start, strict=True):
        moved = (p - p0).abs().max()
        assert 0 < (p - q).abs().max() < 0.05 * moved  # bf16 rounding of the iteration only


# --- Shampoo: Gupta et al. 2018, Algorithms 1 and 2 --------------------------------------------

GUPTA = {"beta2": 1.0, "epsilon": 1e-3, "epsilon_relative": False, "preconditioning_frequency": 1,
         "graft": "none", "momentum": 0.0, "weight_decay": 0.0}


def gupta_matrix(model: LeastSquares, lr: float, eps: float, steps: int) -> np.ndarray:
    """Gupta et al. 2018, Algorithm 1: L₀ = εI, R₀ = εI; L += GGᵀ, R += GᵀG; W −= η L^{−1/4} G R^{−1/4}."""
    W = model.W.detach().numpy().copy()
    m, n = W.shape
    L, R = eps * np.eye(m), eps * np.eye(n)
    for _ in range(steps):
        G = model.np_grad(W)
        L = L + G @ G.T
        R = R + G.T @ G
        W = W - lr * mpow(L, -0.25) @ G @ mpow(R, -0.25)
    return W


def gupta_tensor(model: LeastSquares, lr: float, eps: float, steps: int) -> np.ndarray:
    """Gupta et al. 2018, Algorithm 2 (order k): H_i += G_(i)G_(i)ᵀ; W −= η G ×₁ H₁^{−1/2k} ⋯ ×_k H_k^{−1/2k}."""
    W = model.W.detach().numpy().copy()
    k = W.ndim
    H = [eps * np.eye(d) for d in W.shape]
    for _ in range(steps):
        G = model.np_grad(W)
        P = G
        for i in range(k):
            H[i] = H[i] + unfold(G, i) @ unfold(G, i).T
            P = mode_product(P, mpow(H[i], -1.0 / (2 * k)), i)
        W = W - lr * P
    return W


def test_shampoo_equals_gupta_algorithm_1() -> None:
    model = LeastSquares((6, 4))
    expected = gupta_matrix(copy.deepcopy(model), lr=0.05, eps=1e-3, steps=6)
    got = run_optimizer(model, optimizers.build("shampoo", model, lr=0.05, **GUPTA), 6)
    np.testing.assert_allclose(got, expected, atol=1e-12, rtol=0)


def test_shampoo_tensor_view_equals_gupta_algorithm_2() -> None:
    model = LeastSquares((3, 4, 5))
    expected = gupta_tensor(copy.deepcopy(model), lr=0.05, eps=1e-3, steps=5)
    got = run_optimizer(model, optimizers.build("shampoo", model, lr=0.05, conv_view="tensor", **GUPTA), 5)
    np.testing.assert_allclose(got, expected, atol=1e-12, rtol=0)


def test_shampoo_blocks_are_independent_shampoos() -> None:
    # max_preconditioner_dim 4 splits the 6 rows into blocks of 4 and 2, each with its own L and R.
    model = LeastSquares((6, 4))
    W0 = model.W.detach().numpy().copy()
    W = W0.copy()
    factors = {b: (1e-3 * np.eye(r.stop - r.start), 1e-3 * np.eye(4)) for b, r in enumerate((slice(0, 4), slice(4, 6)))}
    for _ in range(4):
        G = model.np_grad(W)
        for b, rows in enumerate((slice(0, 4), slice(4, 6))):
            L, R = factors[b]
            Gb = G[rows]
            L, R = L + Gb @ Gb.T, R + Gb.T @ Gb
            factors[b] = (L, R)
            W[rows] = W[rows] - 0.05 * mpow(L, -0.25) @ Gb @ mpow(R, -0.25)
    got = run_optimizer(model, optimizers.build("shampoo", model, lr=0.05, max_preconditioner_dim=4, **GUPTA), 4)
    np.testing.assert_allclose(got, W, atol=1e-12, rtol=0)


def test_shampoo_extensions_follow_the_documented_algorithm() -> None:
    """EMA statistics, relative ridge, roots every F steps (graft direction before), AdaGrad
    grafting, Nesterov momentum, decoupled weight decay — as in optimizers/shampoo.py's docstring."""
    lr, mu, wd, b2, eps, F, delta = 0.02, 0.9, 0.1, 0.9, 1e-4, 2, 1e-8
    model = LeastSquares((6, 4))
    W = model.W.detach().numpy().copy()
    SL, SR, A, M = np.zeros((6, 6)), np.zeros((4, 4)), np.zeros((6, 4)), np.zeros((6, 4))
    roots = None
    for t in range(1, 8):
        G = model.np_grad(W)
        SL, SR = b2 * SL + (1 - b2) * G @ G.T, b2 * SR + (1 - b2) * G.T @ G
        if t % F == 0:
            roots = [mpow(S + eps * np.linalg.eigvalsh(S).max() * np.eye(len(S)), -0.25) for S in (SL, SR)]
        A = A + G * G
        D = G / (np.sqrt(A) + delta)
        if roots is None:
            P = D
        else:
            P = roots[0] @ G @ roots[1]
            P = P * np.linalg.norm(D) / (np.linalg.norm(P) + 1e-16)
        M = mu * M + P
        W = W * (1 - lr * wd) - lr * (mu * M + P)
    opt = optimizers.build(
        "shampoo", model, lr=lr, momentum=mu, weight_decay=wd, beta2=b2, epsilon=eps, preconditioning_frequency=F,
        graft="adagrad", graft_eps=delta,
    )
    np.testing.assert_allclose(run_optimizer(model, opt, 7), W, atol=1e-12, rtol=0)


def test_shampoo_roots_a_conv_whose_input_is_one_pixel() -> None:
    """A 3×3 conv on a 1×1 input gets gradient only at the centre tap: 8 of every 9 rows of the
    (in·kh·kw)-sided factor are exactly zero, on which LAPACK's eigh does not converge on this
    machine (the vision comparison's Shampoo trials all died at their first root). In float32 the
    step must succeed and equal Gupta's Algorithm 1 computed in float64."""
    torch.manual_seed(5)
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    x = torch.randn(16, 32, 1, 1)
    W0 = conv.weight.detach().reshape(32, -1).double().numpy().copy()
    # ε = 10 (~1 % of λ_max) keeps float32's rounding of the roots ~1e-6 of the step; the eigh
    # that failed is of the statistic alone, before the ridge.
    opt = optimizers.build("shampoo", conv, adamw_types=[], lr=0.05, **{**GUPTA, "epsilon": 10.0})
    conv(x).square().sum().backward()
    G = conv.weight.grad.reshape(32, -1).double().numpy().copy()
    assert (np.abs(G).sum(axis=0) == 0).sum() == 8 * 32  # only the centre tap has gradient
    opt.step()
    L, R = 10.0 * np.eye(32) + G @ G.T, 10.0 * np.eye(288) + G.T @ G
    expected = W0 - 0.05 * mpow(L, -0.25) @ G @ mpow(R, -0.25)
    got = conv.weight.detach().reshape(32, -1).double().numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected - W0).max(), rtol=0)


@pytest.mark.parametrize(("epsilon", "relative"), [(1e-3, False), (1e-2, True), (0.0, False)])
def test_inverse_root_splits_off_zero_rows_exactly(epsilon: float, relative: bool) -> None:
    """(S + eI)^(−1/4) in float64 for a PSD S with exactly zero rows and columns, against numpy's
    eigendecomposition of the whole matrix (e = 0: the pseudo-inverse root, zero rows get 0)."""
    rng = np.random.default_rng(6)
    A = rng.standard_normal((10, 12))  # a full-rank block: e = 0 is then well posed
    S = np.zeros((30, 30))
    rows = np.arange(1, 30, 3)  # every third row carries the statistic, the rest are zero
    S[np.ix_(rows, rows)] = A @ A.T
    got = inverse_root(torch.from_numpy(S), 4, epsilon, relative).numpy()
    lam, V = np.linalg.eigh(S)
    lam = np.clip(lam, 0, None)
    lam[lam < 1e-12 * lam.max()] = 0  # numpy's rounding of the exact zeros
    shifted = lam + (epsilon * lam.max() if relative else epsilon)
    w = np.where(shifted > 0, np.where(shifted > 0, shifted, 1) ** -0.25, 0)
    np.testing.assert_allclose(got, (V * w) @ V.T, atol=1e-10, rtol=0)
    assert np.all(got[np.setdiff1d(np.arange(30), rows)][:, rows] == 0)


def test_eigh_retries_in_float64_where_float32_does_not_converge() -> None:
    """A float32 PSD matrix that is zero outside every ninth row and column (a 1×1-input conv's
    factor): float32 eigh did not converge on it on this machine; the retry's eigenpairs, cast
    back to float32, must reconstruct it."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(4, 256, 9)
    A = torch.randn(len(idx), len(idx), generator=gen)
    S = torch.zeros(256, 256)
    S[idx.unsqueeze(-1), idx] = A @ A.T
    evals, evecs = _eigh(S)
    assert evals.dtype == evecs.dtype == torch.float32
    torch.testing.assert_close((evecs * evals) @ evecs.T, S, atol=1e-4 * float(S.abs().max()), rtol=0)


# --- SOAP: Vyas et al. 2024, Algorithm 3 -------------------------------------------------------


def eigvecs_descending(S: np.ndarray) -> np.ndarray:
    return np.linalg.eigh(S)[1][:, ::-1]


def soap_transcription(model: LeastSquares, steps: int, lr: float, b1: float, b2: float, eps: float, wd: float,
                       freq: int, max_dim: int = 10000) -> np.ndarray:
    """SOAP for one m × n layer; shampoo β = β₂; the first gradient only initialises L, R, Q_L, Q_R.

    A side longer than ``max_dim`` is not rotated (its Q is the identity and never refreshed).
    """
    W = model.W.detach().numpy().copy()
    m, n = W.shape
    M, V = np.zeros_like(W), np.zeros_like(W)
    G = model.np_grad(W)
    L, R = (1 - b2) * G @ G.T, (1 - b2) * G.T @ G
    rotated = [m <= max_dim, n <= max_dim]
    QL = eigvecs_descending(L) if rotated[0] else np.eye(m)
    QR = eigvecs_descending(R) if rotated[1] else np.eye(n)
    for t in range(1, steps):
        G = model.np_grad(W)
        Gp = QL.T @ G @ QR
        M = b1 * M + (1 - b1) * G
        V = b2 * V + (1 - b2) * Gp**2
        N = QL @ ((QL.T @ M @ QR) / (np.sqrt(V) + eps)) @ QR.T
        W = W - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * N
        W = W - lr * wd * W
        L, R = b2 * L + (1 - b2) * G @ G.T, b2 * R + (1 - b2) * G.T @ G
        if t % freq == 0:  # one power iteration + QR, columns sorted by estimated eigenvalue
            Qs = [QL, QR]
            for axis, S in enumerate((L, R)):
                if not rotated[axis]:
                    continue
                Q = Qs[axis]
                order = np.argsort(-np.diag(Q.T @ S @ Q), kind="stable")
                V = np.take(V, order, axis=axis)
                Qs[axis] = np.linalg.qr(S @ Q[:, order])[0]
            QL, QR = Qs
    return W


# A square layer: its first-step factors GGᵀ and GᵀG are full rank, so the eigenbases are unique
# (up to signs, which SOAP is invariant to). For an m × n layer with m > n, GGᵀ has a null space
# whose eigenbasis is arbitrary (set by rounding inside eigh), and Adam's element-wise scaling in
# the rotated basis depends on that choice: no two eigensolvers need agree there. The rectangular
# case is therefore checked with the long side unrotated (max_precond_dim below it).
SOAP_CASES = [
    pytest.param((5, 5), 100, 10000, 1e-9, id="square-no-refresh"),
    pytest.param((5, 5), 2, 10000, 1e-6, id="square-refresh-every-2"),
    pytest.param((6, 4), 3, 5, 1e-6, id="6x4-rows-unrotated-refresh-every-3"),
]


@pytest.mark.parametrize(("shape", "freq", "max_dim", "atol"), SOAP_CASES)
def test_soap_equals_vyas_algorithm_3(shape: tuple[int, int], freq: int, max_dim: int, atol: float) -> None:
    # Without a refresh the agreement is to rounding (~1e-10 here: Adam's division by √V amplifies
    # it in rotated directions with tiny second moments). pytorch-optimizer (like the reference
    # code) runs the QR refresh in float32, so after a refresh the comparison is float32-accurate.
    model = LeastSquares(shape)
    kw = {"lr": 0.01, "b1": 0.95, "b2": 0.95, "eps": 1e-8, "wd": 0.01, "freq": freq, "max_dim": max_dim}
    expected = soap_transcription(copy.deepcopy(model), 8, **kw)
    opt = optimizers.build("soap", model, lr=0.01, precondition_frequency=freq, max_precond_dim=max_dim)
    got = run_optimizer(model, opt, 8)
    np.testing.assert_allclose(got, expected, atol=atol, rtol=0)
    assert np.abs(expected - LeastSquares(shape).W.detach().numpy()).max() > 1e-3  # it moved


def test_soap_conv_matrix_view_shares_storage() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3)
    opt = optimizers.build("soap", conv, conv_view="matrix")
    for _ in range(3):
        conv.zero_grad()
        conv(torch.randn(2, 3, 6, 6)).square().mean().backward()
        opt.step()
    (view,) = opt._views
    assert view.shape == (5, 27) and view.data_ptr() == conv.weight.data_ptr()
    assert opt.inner.state[view]["exp_avg"].shape == (5, 27)


# --- every baseline: grouping, defaults, metrics, checkpoints --------------------------------


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_groups_cover_every_parameter_once(name: str, resnet18: nn.Module) -> None:
    opt = optimizers.build(name, resnet18)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in resnet18.parameters()}
    by_name = {g["name"]: g for g in opt.param_groups}
    assert "fc.weight" in by_name["adamw"]["param_names"]
    assert "bn1.weight" in by_name["adamw_no_decay"]["param_names"]
    matrix = by_name["matrix"]
    assert matrix["kind"] == "matrix" and len(matrix["params"]) == 20 and all(p.ndim == 4 for p in matrix["params"])
    assert optimizers.requires_full_matrices(name)


def test_settings_are_validated() -> None:
    v = optimizers.validate_settings
    assert v("muon", {"adjust_lr": "kimi"}) == [
        "optimizers.muon.adjust_lr: must be one of original, match_rms_adamw, spectral, none (got 'kimi')"
    ]
    assert v("shampoo", {"graft": "adam"})[0].startswith("optimizers.shampoo.graft: must be one of adagrad, sgd, none")
    assert v("soap", {"beta2": 1.0}) == ["optimizers.soap.beta2: must be < 1.0 (got 1.0)"]
    assert v("spectral_newton", {"distribution": "zero"}) == [
        "optimizers.spectral_newton.distribution: must be one of sharded, redundant (got 'zero')"
    ]
    assert v("shampoo", {"adamw_types": ["dense"]})[0].startswith("optimizers.shampoo.adamw_types")
    for name in MATRIX_OPTIMIZERS:
        fields = {f for f, _, _ in optimizers.describe(name)}
        assert {"lr", "momentum", "weight_decay", "distribution", "bucket_cap_mb", "adamw_lr"} <= fields


@pytest.mark.parametrize("name", MATRIX_OPTIMIZERS)
def test_lowers_least_squares_loss(name: str) -> None:
    model = LeastSquares((6, 4))
    with torch.no_grad():
        model.W.zero_()
    start = model.loss().item()
    opt = optimizers.build(name, model, lr={"muon": 0.02, "shampoo": 0.05, "soap": 0.02}[name])
    run_optimizer(model, opt, 40)
    assert model.loss().item() < 0.2 * start
    metrics = opt.step_metrics()
    assert set(metrics) == {"precond_time_s", "comm_time_s", "load_imbalance", "bytes_communicated"}
    assert metrics["precond_time_s"] > 0 and metrics["comm_time_s"] == 0 and metrics["load_imbalance"] == 1.0


@pytest.fixture(scope="module")
def digits():
    from bench import data

    bundle = data.load_dataset("sklearn:digits", {}, 0)
    X = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))]).double()
    y = torch.stack([bundle.train[i][1] for i in range(len(bundle.train))])
    return bundle.task, X, y


@pytest.mark.parametrize("name", ["adamw", "spectral_newton", *MATRIX_OPTIMIZERS])
def test_defaults_train_the_builtin_cnn_on_digits(name: str, digits) -> None:
    """bench's own workload (sklearn:digits, builtin:cnn), float64, default settings, 40 steps."""
    from bench import models

    task, X, y = digits
    torch.manual_seed(0)
    model = models.build_model("builtin:cnn", task, {}).double()
    opt = optimizers.build(name, model)  # defaults only
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = nn.functional.cross_entropy(model(X), y).item()
    for _ in range(40):
        idx = torch.randint(0, len(X), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = nn.functional.cross_entropy(model(X), y).item()
    assert end < 0.9 * start, (start, end)
