"""Closed-form FLOP counts of the spectral kernels for one m × n matrix.

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

#: Muon's quintic Newton–Schulz coefficients (a, b, c) and step count (Keller Jordan's
#: ``zeropower_via_newtonschulz5``): X ← a·X + (b·A + c·A²)·X with A = X Xᵀ, 5 steps.
NS_QUINTIC = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5

#: Default rank of the randomized SVD (PAPER.md §1: the probe uses the top K = 20 directions).
LOWRANK_Q = 20
#: torch.svd_lowrank's default number of subspace (power) iterations.
LOWRANK_NITER = 2


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


def triangular_solve(k: int, nrhs: int) -> float:
    """One k × k triangular solve with ``nrhs`` right-hand sides: k²·nrhs (k²/2 multiply-adds per
    right-hand side)."""
    return float(k) * k * nrhs


def cholesky_inverse(k: int) -> float:
    """(LLᵀ)⁻¹ from the Cholesky factor L (LAPACK ``potri``, ``torch.cholesky_inverse``): the
    triangular inverse L⁻¹ (k³/3) and the product L⁻ᵀL⁻¹ (k³/3) = (2/3)k³."""
    return 2.0 * k**3 / 3.0


def householder_qr(rows: int, cols: int) -> float:
    """Thin QR of a rows × cols matrix (rows ≥ cols) with Q formed explicitly, as
    ``torch.linalg.qr(X).Q``: ``geqrf`` 2·rows·cols² − (2/3)cols³ plus ``orgqr`` the same
    (GVL §5.2.2) = 4·rows·cols² − (4/3)cols³."""
    return 4.0 * rows * cols**2 - 4.0 / 3.0 * cols**3


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


def gram_eigh(m: int, n: int) -> float:
    """Gram eigendecomposition (the decomposition of the ``gram`` route): A = GᵀG (2Mk²) then
    eigh(A) ((14/3)k³). Gives Σ² and V, the same spectral information as the SVD."""
    M, k = tall(m, n)
    return gram(M, k) + eigh(k)


def damped_solve(m: int, n: int) -> float:
    """The complete α = 2 update ΔW = G (GᵀG + dI)⁻¹ by Cholesky (the ``solve`` route):
    GᵀG (2Mk²) + Cholesky (k³/3) + ``cholesky_solve`` of the k × M right-hand side Gᵀ
    (forward and backward triangular solves, 2·k²·M) = 4Mk² + k³/3."""
    M, k = tall(m, n)
    return gram(M, k) + cholesky(k) + 2.0 * triangular_solve(k, M)


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


def svd_lowrank(m: int, n: int, q: int = LOWRANK_Q, niter: int = LOWRANK_NITER) -> float:
    """``torch.svd_lowrank(G, q, niter)`` (Halko et al. Alg. 4.4 + 5.1, as torch implements it)
    on the tall M × k form A:

    - X = A R with R k × q random: 2Mkq; QR of X (M × q);
    - ``niter`` times: X = Aᵀ Q (2Mkq), QR (k × q); X = A Q (2Mkq), QR (M × q);
    - B = Qᵀ A (q × k): 2Mkq; thin SVD of B (k × q tall form); U = Q U_B: 2Mq².

    Total: (2 + 2·niter)·2Mkq + (1 + niter)·QR(M, q) + niter·QR(k, q) + SVD(k, q) + 2Mq².
    ``q`` is clipped to k (torch requires q ≤ min(m, n)).
    """
    M, k = tall(m, n)
    q = min(q, k)
    products = (2 + 2 * niter) * matmul(M, k, q)
    qrs = (1 + niter) * householder_qr(M, q) + niter * householder_qr(k, q)
    return products + qrs + svd(k, q) + matmul(M, q, q)


# --------------------------------------------------------------------- the optimizer's own routes
def transform(route: str, m: int, n: int, ns_steps: int = 0) -> float:
    """``optimizers.spectral.spectral_transform(G, method=route)`` — the complete update
    ΔW = U diag(T(σ; α)) Vᵀ as the optimizer computes it (tall form, fallbacks not taken):

    - ``svd``:   SVD + (U·T(σ)) @ Vᵀ (2Mk²);
    - ``gram``:  GᵀG (2Mk²) + eigh + (V·w) @ Vᵀ (2k³) + G @ (k × k) (2Mk²);
    - ``solve``: GᵀG (2Mk²) + Cholesky (k³/3) + ``cholesky_inverse`` ((2/3)k³) + G @ (k × k)
      (2Mk²) — the optimizer applies the explicit inverse with one GEMM (faster than two
      triangular solves on CPU; :func:`damped_solve` counts the triangular-solve kernel);
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


def method_flops(
    method: str,
    m: int,
    n: int,
    *,
    batch: int = 1,
    top_k: int = LOWRANK_Q,
    niter: int = LOWRANK_NITER,
    ns_steps: int | None = None,
) -> float:
    """FLOPs of one call of a ``bench.profile.kernels`` method on a batch of m × n matrices.

    ``ns_steps``: Newton–Schulz steps (``ns5``: default 5; ``transform:polar``: the number the
    call ran, required).
    """
    if method == "matmul":
        M, k = tall(m, n)
        one = matmul(M, k, k)  # the ceiling product: (M × k) @ (k × k), the Gram-size product
    elif method == "svd" or method.startswith("svd:"):
        one = svd(m, n)
    elif method == "svd_lowrank":
        one = svd_lowrank(m, n, top_k, niter)
    elif method == "gram_eigh":
        one = gram_eigh(m, n)
    elif method == "damped_solve":
        one = damped_solve(m, n)
    elif method == "ns5":
        one = newton_schulz5(m, n, NS_STEPS if ns_steps is None else ns_steps)
    elif method.startswith("transform:"):
        route = method.split(":", 1)[1]
        if route == "polar" and ns_steps is None:
            raise ValueError("transform:polar needs ns_steps (the iterations the call ran)")
        one = transform(route, m, n, ns_steps or 0)
    else:
        raise ValueError(f"unknown method {method!r}")
    return float(batch) * one
