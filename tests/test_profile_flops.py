"""The closed-form FLOP counts of bench.profile.flops against products counted on the optimizers' code."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bench.profile import flops as F

_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm}
_FUSED = {torch.addmm, torch.baddbmm}  # input + mat1 @ mat2: the product is args[1] @ args[2]


class MatmulCounter(TorchFunctionMode):
    """Counts 2·batch·p·q·r for every dense product (p × q) @ (q × r) torch runs inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _MATMULS or func in _FUSED:
            a, b = (args[1], args[2]) if func in _FUSED else (args[0], args[1])
            batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel()
            self.flops += 2.0 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
            self.shapes.append((tuple(a.shape), tuple(b.shape)))
        return func(*args, **(kwargs or {}))


def test_matmul_is_2mnk():
    assert F.matmul(3, 5, 7) == 2 * 3 * 5 * 7
    # The ceiling product of an m × n matrix: (M × k) @ (k × k), either orientation.
    assert F.method_flops("matmul", 300, 40) == F.method_flops("matmul", 40, 300) == 2 * 300 * 40 * 40
    assert F.method_flops("matmul", 300, 40, batch=3) == 3 * 2 * 300 * 40 * 40


def test_closed_forms():
    M, k = 1000, 100
    assert F.gram(M, k) == F.gram(k, M) == 2 * M * k**2
    assert F.eigh(k) == pytest.approx(14 / 3 * k**3)
    assert F.cholesky(k) + F.cholesky_inverse(k) == pytest.approx(k**3)
    assert F.newton_schulz5(M, k) == 5 * (4 * M * k**2 + 2 * k**3)
    # Thin SVD: the cheaper of Golub–Reinsch and R-SVD (they cross at M = 1.5 k).
    assert F.svd(M, k) == 6 * M * k**2 + 20 * k**3
    assert F.svd(120, 100) == 14 * 120 * 100**2 + 8 * 100**3
    assert F.svd(150, 100) == pytest.approx(14 * 150 * 100**2 + 8 * 100**3)
    assert F.svd(150, 100) == pytest.approx(6 * 150 * 100**2 + 20 * 100**3)


def _ns5_transcription(G: torch.Tensor, count: list[float]) -> torch.Tensor:
    """Muon's quintic Newton–Schulz written out with a counting product (wide k × M form), with
    Keller Jordan's coefficients typed in here: the independent oracle of the ns5 kernel."""

    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        count[0] += 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
        return a @ b

    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / X.norm()
    for _ in range(F.NS_STEPS):
        A = mm(X, X.T)
        B = b * A + c * mm(A, A)
        X = a * X + mm(B, X)
    return X.T if G.shape[0] > G.shape[1] else X


@pytest.mark.parametrize("shape", [(48, 20), (32, 32)])
def test_newton_schulz_count_matches_its_products(shape):
    """The ns5 kernel (Muon's own call) computes the quintic iteration and runs exactly the
    products the closed form counts."""
    from bench.profile.kernels import build_kernel

    G = torch.randn(*shape, dtype=torch.float64)
    count = [0.0]
    reference = _ns5_transcription(G, count)
    assert count[0] == F.newton_schulz5(*shape) == F.method_flops("ns5", *shape)
    with MatmulCounter() as counter:
        out = build_kernel("ns5", G.unsqueeze(0))()[0]
    assert counter.flops == F.newton_schulz5(*shape)
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
@pytest.mark.parametrize("route", ["gram", "solve", "svd", "polar"])
def test_transform_counts_match_the_optimizer_code(shape, route):
    """Products counted in optimizers.spectral equal the closed form minus its factorisations."""
    from optimizers.spectral import spectral_transform_with_stats

    M, k = F.tall(*shape)
    G = torch.randn(*shape, dtype=torch.float64)
    with MatmulCounter() as counter:
        res = spectral_transform_with_stats(G, alpha=2.0, damping=0.1, method=route)
    factorisations = {
        "gram": F.eigh(k),
        "solve": F.cholesky(k) + F.cholesky_inverse(k),  # Cholesky and the explicit inverse
        "svd": F.svd(M, k),
        "polar": F.eigh(k),
    }[route]
    closed = F.transform(route, *shape, ns_steps=res.ns_steps)
    assert counter.flops == pytest.approx(closed - factorisations)
    if route == "polar":
        assert res.ns_steps > 0
        assert F.method_flops("polar", *shape, ns_steps=res.ns_steps) == closed
    else:
        assert F.method_flops(route, *shape) == closed


def test_method_flops_dispatch():
    for method in ("svd", "gram", "solve", "ns5", "matmul"):
        assert F.method_flops(method, 512, 128) > 0
        assert F.method_flops(method, 512, 128, batch=4) == 4 * F.method_flops(method, 512, 128)
        assert F.method_flops(method, 128, 512) == F.method_flops(method, 512, 128)  # orientation-free
    with pytest.raises(ValueError, match="ns_steps"):
        F.method_flops("polar", 512, 128)
    with pytest.raises(ValueError, match="unknown method"):
        F.method_flops("gram_eigh", 4, 4)  # an old bare kernel: not a method any more


def test_methods_are_the_optimizers_names():
    from optimizers.spectral import METHODS as SPECTRAL_METHODS

    assert F.ROUTES == SPECTRAL_METHODS
    assert F.METHODS == (*SPECTRAL_METHODS, "ns5")
