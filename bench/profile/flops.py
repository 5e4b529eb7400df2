"""Closed-form FLOP counts of the optimizers' per-matrix routes for one m × n matrix.

The methods are the optimizers' own names (one vocabulary across the profile table, the cost
model, the CLI and the README): Spectral Newton's ``svd``, ``gram``, ``solve`` and ``polar``
(``optimizers.spectral.spectral_transform``, docs/science/spectral_newton.md) and Muon's ``ns5`` (its quintic
Newton–Schulz); ``matmul`` is the ceiling product every measured row is compared with.

Conventions (the same for every method, so that counts compare across methods):

- M = max(m, n), k = min(m, n). Every method works on the tall M × k form (a wide matrix is
  transposed first, exactly as ``optimizers.spectral`` does), so counts depend on (M, k) only.
- A dense product of an (a × b) and a (b × c) matrix costs 2abc (one multiply and one add per
  term). Factorisations use the standard leading-order counts of Golub & Van Loan, *Matrix
  Computations* (4th ed.), quoted at each function.
- Element-wise work (scaling, symmetrising, norms, adding d·I) is O(Mk) and left out: it is below
  1 % of the total for k ≥ 64 in every method here and would only blur the closed forms.
- A batch of B matrices costs B times one matrix (``batch`` argument of :func:`method_flops`).

These are *nominal* counts: LAPACK / cuSOLVER pick blocked or divide-and-conquer variants whose
true operation counts differ by constant factors. The cost model fits time ≈ a·flops + b per
(device, method, dtype), so a constant-factor difference in one method's convention is absorbed
by its own ``a``; what matters is that each count has the right dependence on (M, k).
"""

from __future__ import annotations

#: Symmetric eigensolver with eigenvectors (LAPACK ``syevd`` / cuSOLVER ``syevd``):
#: tridiagonal reduction (4/3)k³ (``sytrd``) + divide-and-conquer eigenvectors of the
#: tridiagonal matrix ≈ (4/3)k³ (its matrix-multiply updates with little deflation, the usual
#: case for Gram matrices of gradients) + back-transformation by the Householder reflectors
#: 2k³ (``ormtr``) = (14/3)k³ = (4/3)k³ · EIGH_CONSTANT with EIGH_CONSTANT = 3.5.
EIGH_CONSTANT = 3.5

#: Muon's Newton–Schulz step count (its default ``ns_steps``): X ← a·X + (b·A + c·A²)·X with
#: A = X Xᵀ on the wide form.
NS_STEPS = 5


def tall(m: int, n: int) -> tuple[int, int]:
    """(M, k) = (max, min): the orientation every method works in."""
    return (max(m, n), min(m, n))


def matmul(a: int, b: int, c: int) -> float:
    """(a × b) @ (b × c): 2abc."""
    return 2.0 * a * b * c


def gram(m: int, n: int) -> float:
    """GᵀG on the small side: (k × M) @ (M × k) = 2·M·k² (no symmetry exploited: torch uses a
    general GEMM)."""
    M, k = tall(m, n)
    return matmul(k, M, k)


def eigh(k: int) -> float:
    """Symmetric k × k eigendecomposition with eigenvectors: (4/3)·EIGH_CONSTANT·k³ = (14/3)k³."""
    return 4.0 / 3.0 * EIGH_CONSTANT * k**3


def cholesky(k: int) -> float:
    """Cholesky factorisation of a k × k SPD matrix: k³/3 (GVL Alg. 4.2.1)."""
    return k**3 / 3.0


def cholesky_inverse(k: int) -> float:
    """(LLᵀ)⁻¹ from the Cholesky factor L (LAPACK ``potri``, ``torch.cholesky_inverse``): the
    triangular inverse L⁻¹ (k³/3) and the product L⁻ᵀL⁻¹ (k³/3) = (2/3)k³."""
    return 2.0 * k**3 / 3.0


def svd(m: int, n: int) -> float:
    """Thin SVD (U₁ (M × k), Σ, V) of an M × k matrix, GVL Figure 8.6.1 (5.4.1 in the 3rd ed.).

    Golub–Reinsch (bidiagonalise the matrix itself): 14·M·k² + 8·k³; R-SVD (QR first, then
    Golub–Reinsch on the k × k R): 6·M·k² + 20·k³. LAPACK switches to the QR-first path for tall
    matrices, so the count is the smaller of the two (they cross at M = 1.5k). Convention: the
    project uses this one count for every driver (gesdd, gesvd, gesvdj, gesvda); drivers differ
    by their fitted constants, not by the count.
    """
    M, k = tall(m, n)
    return min(14.0 * M * k**2 + 8.0 * k**3, 6.0 * M * k**2 + 20.0 * k**3)


def newton_schulz5(m: int, n: int, steps: int = NS_STEPS) -> float:
    """Muon-style quintic Newton–Schulz, ``steps`` iterations (the ``ns5`` kernel; this is the
    iteration counted, not the project's cubic one).

    On the wide k × M form X: A = X Xᵀ (2k²M), A·A (2k³), (bA + cA²)·X (2k²M) per step:
    steps · (4Mk² + 2k³).
    """
    M, k = tall(m, n)
    return steps * (matmul(k, M, k) + matmul(k, k, k) + matmul(k, k, M))


def polar_cubic(m: int, n: int, steps: int) -> float:
    """The project's cubic Newton–Schulz (``optimizers.spectral.newton_schulz_polar``) on the
    tall M × k form: X ← 1.5X − 0.5·X(XᵀX), i.e. XᵀX (2Mk²) and X·(k × k) (2Mk²) per step:
    steps · 4Mk². ``steps`` is the number it ran (it stops on convergence)."""
    M, k = tall(m, n)
    return steps * (matmul(k, M, k) + matmul(M, k, k))


# --------------------------------------------------------------------- the optimizer's own routes
#: Spectral Newton's routes (``optimizers.spectral.METHODS``, duplicated so that counting needs no
#: torch; a test checks the two agree).
ROUTES: tuple[str, ...] = ("svd", "gram", "solve", "polar")
#: Every method of the profiler: Spectral Newton's routes and Muon's Newton–Schulz.
METHODS: tuple[str, ...] = (*ROUTES, "ns5")
#: Version of the method vocabulary written in every kernel and catalogue row
#: (``methods_version``): 2 = the optimizers' names. Rows without it use the old names
#: (``transform:gram``, ``damped_solve``, ...), which ``analysis.cost_model`` upgrades on reading.
METHODS_VERSION = 2


def transform(route: str, m: int, n: int, ns_steps: int = 0) -> float:
    """``optimizers.spectral.spectral_transform(G, method=route)`` — the complete update
    ΔW = U diag(T(σ; α)) Vᵀ as the optimizer computes it (tall form, fallbacks not taken):

    - ``svd``:   SVD + (U·T(σ)) @ Vᵀ (2Mk²);
    - ``gram``:  GᵀG (2Mk²) + eigh + (V·w) @ Vᵀ (2k³) + G @ (k × k) (2Mk²);
    - ``solve``: GᵀG (2Mk²) + Cholesky (k³/3) + ``cholesky_inverse`` ((2/3)k³) + G @ (k × k)
      (2Mk²) — the optimizer applies the explicit inverse with one GEMM (faster than two
      triangular solves on CPU, see ``optimizers.spectral._solve``);
    - ``polar``: ``ns_steps`` cubic Newton–Schulz steps (4Mk² each) + P = QᵀG (2Mk²) + eigh(P)
      + (V·w) @ Vᵀ (2k³) + G @ (k × k) (2Mk²).
    """
    M, k = tall(m, n)
    apply_eig = matmul(k, k, k) + matmul(M, k, k)
    if route == "svd":
        return svd(M, k) + matmul(M, k, k)
    if route == "gram":
        return gram(M, k) + eigh(k) + apply_eig
    if route == "solve":
        return gram(M, k) + cholesky(k) + cholesky_inverse(k) + matmul(M, k, k)
    if route == "polar":
        return polar_cubic(M, k, ns_steps) + matmul(k, M, k) + eigh(k) + apply_eig
    raise ValueError(f"unknown spectral_transform route {route!r}")


def method_flops(method: str, m: int, n: int, *, batch: int = 1, ns_steps: int | None = None) -> float:
    """FLOPs of one call of a ``bench.profile.kernels`` method on a batch of m × n matrices.

    ``ns_steps``: Newton–Schulz steps (``ns5``: default :data:`NS_STEPS`; ``polar``: the number
    the call ran, required).
    """
    M, k = tall(m, n)
    if method == "matmul":
        one = matmul(M, k, k)  # the ceiling product: (M × k) @ (k × k), the Gram-size product
    elif method == "ns5":
        one = newton_schulz5(m, n, NS_STEPS if ns_steps is None else ns_steps)
    elif method in ROUTES:
        if method == "polar" and ns_steps is None:
            raise ValueError("polar needs ns_steps (the iterations the call ran)")
        one = transform(method, m, n, ns_steps or 0)
    else:
        raise ValueError(f"unknown method {method!r}")
    return float(batch) * one
