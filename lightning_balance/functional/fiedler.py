r"""
Fiedler vectors
^^^^^^^^^^^^^^^

The eigenvector of the second-smallest eigenvalue of a graph Laplacian, for a stack of similarity graphs
``[N, B, B]``, by one of several solvers:

* ``"eigh"``: the full batched eigendecomposition, ``torch.linalg.eigh``, :math:`O(B^3)`. It also resolves a
  repeated second eigenvalue (see below), so the other solvers fall back to it whenever they cannot.
* ``"subspace"``: Chebyshev-filtered subspace iteration on the shifted operator. Only the top of the spectrum is
  wanted, and it is known in closed form where it starts: for the normalized and random-walk Laplacians the
  Fiedler vector is the second-largest eigenvector of the normalized adjacency :math:`A = D^{-1/2} S D^{-1/2}`,
  whose spectrum lies in :math:`[-1, 1]` and whose largest eigenvector is :math:`\sqrt{d}` (eigenvalue 1); for
  the plain Laplacian :math:`L = D - S` it is the second-largest of :math:`I - L / c` with :math:`c = 2 \max d`
  (spectrum in :math:`[0, 1]`, top eigenvector :math:`\mathbf{1}`). The known top eigenvector is projected out
  (deflated) at every step, a block of ``block_size`` vectors is multiplied by a Chebyshev polynomial that damps
  :math:`[\text{lower bound}, \text{smallest Ritz value of the block}]`, and a Rayleigh–Ritz step in the block
  gives the two leading Ritz pairs. Each step is a batched ``[B, B] @ [B, block]`` product: :math:`O(B^2)`.
* ``"lobpcg"``: ``torch.lobpcg`` for the three largest eigenpairs of the same operator (the trivial one and the
  two that follow it).
* ``"auto"`` (default): ``"eigh"`` on every device but the CPU and for small batches; ``"subspace"`` on the CPU
  from :data:`AUTO_SUBSPACE_MIN_SIZE` samples on. The threshold was chosen by ``benchmarks/saln_benchmark.py``
  (``--parts solver``), which also measures how often the kept sets agree with ``eigh``'s.

An iterative solution is accepted for a graph only when it can be trusted to be the one ``eigh`` would give:
both leading Ritz pairs have residuals below ``tol``, the graph has no isolated node, the second eigenvalue is
separated from the trivial one (a connected graph) and from the third (a simple Fiedler eigenvalue) by more than
the tolerance that ``eigh``'s own path uses to call two eigenvalues equal, with a margin. Every other graph (a
disconnected graph, duplicated samples, a repeated eigenvalue, an iteration that did not converge) is solved
again by ``eigh``, so the result is the same as ``eigh``'s up to rounding. Deciding that reads one flag per call
on the host: free on the CPU, one synchronisation on a GPU; ``"auto"`` never picks an iterative solver there.

What ``eigh``'s path does with a repeated second eigenvalue: the trivial eigenvector is known in closed form
(:math:`\mathbf{1}` or :math:`D^{1/2}\mathbf{1}`), so it is projected out of the eigenspace of the smallest
eigenvalues, leaving the Fiedler *subspace* with projector :math:`P`. If it is one-dimensional, :math:`f` is its
unit vector. Otherwise :math:`f` is the projection :math:`P d` of the degree vector (normalised), and if that
vanishes, :math:`f_i = \sqrt{P_{ii}}`, the length of sample ``i``'s spectral embedding. All three are independent
of the eigensolver's choice of basis and of the order of the samples.

The vectors come back with unit norm and the largest-magnitude entry positive; for ``laplacian="random_walk"``
they are the normalized eigenvector mapped back by :math:`D^{-1/2}` (isolated nodes keep their value) and
normalised again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, Optional, Union

import torch

__all__ = ["AUTO_SUBSPACE_MIN_SIZE", "FiedlerMethod", "FiedlerResult", "fiedler_vectors", "resolve_fiedler_method"]

FiedlerMethod = Literal["auto", "eigh", "subspace", "lobpcg"]
_FIEDLER_METHODS = ("auto", "eigh", "subspace", "lobpcg")
_LAPLACIANS = ("plain", "normalized", "random_walk")

#: From this batch size on, ``method="auto"`` uses subspace iteration on the CPU (``eigh`` below it and on other
#: devices). Chosen by measurement: ``python benchmarks/saln_benchmark.py --parts solver``.
AUTO_SUBSPACE_MIN_SIZE = 160

# Chebyshev degree per outer step and outer steps before giving up (then eigh). Chosen by measurement, see above.
_DEGREE = 5
_MAX_ITER = 12


class FiedlerResult(NamedTuple):
    """What :func:`fiedler_vectors` returns with ``return_info=True``.

    Attributes:
        vectors: ``[N, B]`` Fiedler vectors, unit norm, largest-magnitude entry positive.
        fallback: ``[N]`` bool, the graphs an iterative solver handed to ``eigh`` (all False for ``"eigh"``).
        method: the solver that ran (``"auto"`` resolved).
    """

    vectors: torch.Tensor
    fallback: torch.Tensor
    method: str


def _host_reads_free(device: torch.device) -> bool:
    """Whether reading a tensor's value on the host (``bool``, ``.item()``) is free here: no device to wait for."""
    return device.type == "cpu"


def resolve_fiedler_method(method: str, batch_size: int, device: torch.device) -> str:
    """The solver ``method`` stands for at this batch size and device (``"auto"`` resolved).

    Example:
        >>> cpu = torch.device("cpu")
        >>> resolve_fiedler_method("auto", 64, cpu), resolve_fiedler_method("auto", 1024, cpu)
        ('eigh', 'subspace')
        >>> resolve_fiedler_method("lobpcg", 64, torch.device("cpu"))
        'lobpcg'
    """
    if method not in _FIEDLER_METHODS:
        raise ValueError(f"Expected argument `solver` to be one of {_FIEDLER_METHODS}, but got {method!r}.")
    if method != "auto":
        return method
    return "subspace" if _host_reads_free(device) and batch_size >= AUTO_SUBSPACE_MIN_SIZE else "eigh"


def fiedler_vectors(
    sim: torch.Tensor,
    laplacian: str = "random_walk",
    *,
    method: FiedlerMethod = "auto",
    tol: Optional[float] = None,
    block_size: int = 16,
    max_iter: Optional[int] = None,
    return_info: bool = False,
) -> Union[torch.Tensor, FiedlerResult]:
    r"""Fiedler vectors of a stack of similarity graphs.

    Args:
        sim: ``[N, B, B]`` symmetric, non-negative edge weights with a zero diagonal (float32 or float64).
        laplacian: ``"random_walk"``, ``"normalized"`` or ``"plain"``.
        method: ``"auto"``, ``"eigh"``, ``"subspace"`` or ``"lobpcg"`` (see the module docstring).
        tol: residual tolerance of the iterative solvers, in units of the operator's spectrum (which lies in
            ``[-1, 1]``); default ``1e-5`` in float32, ``1e-10`` in float64.
        block_size: vectors in the subspace iteration's block (capped at ``B - 1``). It should exceed the number
            of clusters a batch typically holds: their eigenvalues crowd the top of the spectrum.
        max_iter: outer steps of the iterative solvers before they hand the graph to ``eigh``.
        return_info: return a :class:`FiedlerResult` instead of the vectors alone.

    Returns:
        ``[N, B]`` vectors, or a :class:`FiedlerResult`.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9], [0.0, 1.0]])
        >>> unit = x / x.norm(dim=-1, keepdim=True)
        >>> sim = (unit @ unit.T).fill_diagonal_(0).unsqueeze(0)
        >>> fiedler_vectors(sim).round(decimals=2)  # the middle sample sits closest to the cut
        tensor([[-0.4800, -0.3900, -0.0700,  0.5000,  0.6000]])
        >>> gen = torch.Generator().manual_seed(0)
        >>> centres = torch.randn(2, 5, 32, generator=gen)  # two batches of five clusters
        >>> x = centres.repeat_interleave(60, dim=1) + 0.5 * torch.randn(2, 300, 32, generator=gen)
        >>> unit = x / x.norm(dim=-1, keepdim=True)
        >>> sim = (unit @ unit.mT).clamp(min=0) * (1 - torch.eye(300))
        >>> info = fiedler_vectors(sim, method="subspace", return_info=True)
        >>> info.method, info.vectors.shape, info.fallback.tolist()  # clusters: converged, no eigh needed
        ('subspace', torch.Size([2, 300]), [False, False])
        >>> torch.allclose(info.vectors, fiedler_vectors(sim, method="eigh"), atol=1e-4)
        True
        >>> noise = torch.rand(1, 300, 300, generator=gen)
        >>> noise = (noise + noise.mT) * (1 - torch.eye(300))
        >>> fiedler_vectors(noise, method="subspace", return_info=True).fallback  # no structure: handed to eigh
        tensor([True])
    """
    if laplacian not in _LAPLACIANS:
        raise ValueError(f"Expected argument `laplacian` to be one of {_LAPLACIANS}, but got {laplacian!r}.")
    if sim.ndim != 3 or sim.shape[-1] != sim.shape[-2]:
        raise RuntimeError(f"Expected argument `sim` to have shape [N, B, B], but got {tuple(sim.shape)}.")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"Expected argument `block_size` to be an integer of at least 2, but got {block_size!r}.")
    n, b, _ = sim.shape
    resolved = resolve_fiedler_method(method, b, sim.device)
    if resolved != "eigh" and b < 8:
        resolved = "eigh"  # too small for a block of vectors orthogonal to the trivial one
    no_fallback = torch.zeros(n, dtype=torch.bool, device=sim.device)
    if resolved == "eigh" or n == 0:
        vectors = _fiedler_eigh(sim, laplacian)
        return FiedlerResult(vectors, no_fallback, "eigh") if return_info else vectors
    vectors, fallback = _solve_iterative(
        lambda v: sim @ v, sim.sum(-1), laplacian, resolved, lambda rows: _fiedler_eigh(sim[rows], laplacian),
        tol=tol, block_size=block_size, max_iter=max_iter,
    )
    return FiedlerResult(vectors, fallback, resolved) if return_info else vectors


def _solve_iterative(
    sim_apply: Callable[[torch.Tensor], torch.Tensor],
    degree: torch.Tensor,
    laplacian: str,
    method: str,
    eigh_rows: Callable[[torch.Tensor], torch.Tensor],
    *,
    tol: Optional[float],
    block_size: int,
    max_iter: Optional[int],
    floor: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An iterative solve from the similarity's action ``sim_apply(v) = S @ v`` on ``[N, B, p]`` blocks and the
    degrees; ``eigh_rows(rows)`` solves the graphs it hands back. Returns the vectors and the fallback mask.

    ``floor`` (``[N]``) is a proven lower bound of the shifted operator's spectrum tighter than the general one
    (-1 for the normalized adjacency, 0 for the plain shift): the Chebyshev filter damps ``[floor, upper]``, and the
    narrower that interval the fewer steps it needs.
    """
    b = degree.shape[-1]
    if tol is None:
        tol = 1e-10 if degree.dtype == torch.float64 else 1e-5
    op, trivial, lower = _operator(sim_apply, degree, laplacian)
    iterations = _MAX_ITER if max_iter is None else int(max_iter)
    if method == "subspace":
        bound = torch.full_like(degree[:, 0], lower) if floor is None else floor.clamp(min=lower)
        vec, theta, residual = _subspace(op, trivial, bound, min(block_size, b - 1), iterations, tol)
    else:
        vec, theta, residual = _lobpcg(op, trivial, iterations, tol)
    ok = _accept(theta, residual, degree, laplacian, tol, degree.dtype)
    vectors = _finish(vec, degree, laplacian)
    # The one host decision of an iterative solve: which graphs eigh has to take. Free on the CPU.
    fallback = ~ok
    if bool(fallback.any()):
        rows = torch.nonzero(fallback).flatten()
        vectors = vectors.index_copy(0, rows, eigh_rows(rows))
    return vectors, fallback


def _cosine_graph_solve(
    unit: torch.Tensor, negative: str, laplacian: str, sim: Optional[torch.Tensor],
    eigh_rows: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    r"""Subspace iteration on the cosine graph of the unit rows ``unit`` ``[N, B, D]``, with a spectrum floor proven
    from the rows, and without forming the graph when ``sim`` is None.

    Write the graph as :math:`S = G + N - \mathrm{diag}` with :math:`G = U U^\top` (positive semi-definite) and
    :math:`N \ge 0` what the negative-similarity rule added (``clamp``: :math:`\max(-G, 0)`; ``abs``: twice
    that; ``shift`` rescales instead). For :math:`y = D^{-1/2} x`, :math:`y^\top G y \ge 0` and
    :math:`y^\top N y \ge -\sum_i r_i y_i^2` with :math:`r_i` the row sums of :math:`N`, so the normalized
    adjacency has no eigenvalue below :math:`-\max_i (S_{ii}^{removed} + r_i) / d_i`, and :math:`r_i` is the
    degree minus the row sum of :math:`G`, an :math:`O(B D)` product. That floor is about -0.1 where the general
    one is -1, and the Chebyshev filter over the narrower interval needs a fraction of the steps.

    When ``sim`` is None (``shift``, or ``clamp`` with no negative cosine) the products go through the rows:
    :math:`S V = U (U^\top V) - \mathrm{diag}(S^{removed}) V` (plus :math:`1 1^\top V / 2` and halved for
    ``shift``), which costs :math:`4 B D p` and never builds the :math:`B \times B` Gram matrix.
    """
    ut = unit.mT.contiguous()  # a transposed view would be copied by every product
    loops = torch.linalg.vector_norm(unit, dim=-1, keepdim=True).square()  # diag(U U^T): 1, or 0 (zero row)
    ones = torch.ones(*unit.shape[:-1], 1, dtype=unit.dtype, device=unit.device)
    gram_rows = (unit @ (ut @ ones)).squeeze(-1) - loops.squeeze(-1)  # sum over j != i of G_ij
    if negative == "shift":
        loops = 0.5 * (loops + 1.0)
    if sim is not None:
        def sim_apply(v: torch.Tensor) -> torch.Tensor:
            return sim @ v

        degree = sim.sum(-1)
    elif negative == "shift":
        def sim_apply(v: torch.Tensor) -> torch.Tensor:
            return 0.5 * (unit @ (ut @ v) + v.sum(-2, keepdim=True)) - loops * v

        degree = sim_apply(ones).squeeze(-1).clamp_min(0.0)
    else:
        def sim_apply(v: torch.Tensor) -> torch.Tensor:
            return unit @ (ut @ v) - loops * v

        degree = sim_apply(ones).squeeze(-1).clamp_min(0.0)
    # Row sums of N: what clamp or abs added to G off the diagonal; shift adds only positive semi-definite terms.
    added = torch.zeros_like(degree) if negative == "shift" else (degree - gram_rows).clamp_min(0.0)
    removed = loops.squeeze(-1) + added
    tiny = torch.finfo(degree.dtype).tiny
    if laplacian == "plain":
        # L = D - S <= D + diag(removed), so I - L / c with c = 2 max(d) stays above 1 - max(d + removed) / c.
        c = (2.0 * degree.amax(-1)).clamp_min(tiny)
        floor = 1.0 - (degree + removed).amax(-1) / c
    else:
        floor = -(removed / degree.clamp_min(tiny)).amax(-1)
    # A margin for the rounding of the products the bound is computed from.
    floor = floor - 1e-3
    vectors, _ = _solve_iterative(sim_apply, degree, laplacian, "subspace", eigh_rows, tol=None, block_size=16,
                                  max_iter=None, floor=floor)
    return vectors


# ------------------------------------------------------------------------------------------------ eigh


def _fiedler_eigh(sim: torch.Tensor, laplacian: str) -> torch.Tensor:
    """A Fiedler vector of every graph by a full eigendecomposition, chosen as the module docstring says."""
    n, b, _ = sim.shape
    eps = torch.finfo(sim.dtype).eps
    degree = sim.sum(-1)
    if laplacian == "plain":
        lap = torch.diag_embed(degree) - sim
        trivial = torch.full_like(degree, b**-0.5)
    else:
        # Isolated nodes get D^{-1/2} = 0: the Laplacian D^{-1/2} (D - S) D^{-1/2} then has a zero row there, so an
        # isolated node is its own connected component, as it is under the plain Laplacian.
        inv_sqrt = _inv_sqrt(degree)
        lap = torch.diag_embed((degree > 0).to(sim.dtype)) - inv_sqrt.unsqueeze(-1) * sim * inv_sqrt.unsqueeze(-2)
        trivial = degree.sqrt()
        trivial = trivial / torch.linalg.vector_norm(trivial, dim=-1, keepdim=True).clamp_min(eps)
    evals, evecs = torch.linalg.eigh(lap)

    # Eigenvalues within numerical noise of the second-smallest one are the same eigenvalue: their span W holds the
    # trivial vector and the Fiedler subspace; P = P_W - t t^T is the projector onto the latter.
    scale = evals[:, -1:].abs().clamp_min(1.0)
    in_w = (evals <= evals[:, 1:2] + eps**0.5 * scale).to(sim.dtype)  # [N, B], eigenvalue index
    t = trivial
    diag_p = (evecs.square() * in_w.unsqueeze(-2)).sum(-1) - t.square()  # P_ii, [N, B]
    rank = in_w.sum(-1) - (t.square().sum(-1) > 0.5).to(sim.dtype)

    def project(vec: torch.Tensor) -> torch.Tensor:
        coeff = (evecs.mT @ vec.unsqueeze(-1)).squeeze(-1) * in_w
        return (evecs @ coeff.unsqueeze(-1)).squeeze(-1) - t * (t * vec).sum(-1, keepdim=True)

    # One-dimensional subspace: P = f f^T, so the column of P with the largest diagonal is |f_i*| f.
    pivot = diag_p.argmax(-1, keepdim=True)
    column = project(torch.zeros_like(degree).scatter(-1, pivot, 1.0))
    unique = column / diag_p.gather(-1, pivot).clamp_min(eps).sqrt()
    # Repeated eigenvalue: project the degree vector, a direction every sample order agrees on.
    probe = project(degree)
    probe_norm = torch.linalg.vector_norm(probe, dim=-1, keepdim=True)
    embedding = diag_p.clamp_min(0.0).sqrt()
    degenerate = torch.where(probe_norm > eps**0.5 * torch.linalg.vector_norm(degree, dim=-1, keepdim=True),
                             probe / probe_norm.clamp_min(eps), embedding)
    fiedler = torch.where((rank <= 1.5).unsqueeze(-1), unique, degenerate)
    return _finish(fiedler, degree, laplacian)


def _inv_sqrt(degree: torch.Tensor) -> torch.Tensor:
    return torch.where(degree > 0, degree.clamp_min(torch.finfo(degree.dtype).tiny).rsqrt(), 0.0)


def _finish(fiedler: torch.Tensor, degree: torch.Tensor, laplacian: str) -> torch.Tensor:
    """Map back to the random-walk vector where asked, normalise, and fix the arbitrary sign."""
    eps = torch.finfo(fiedler.dtype).eps
    if laplacian == "random_walk":
        # Generalised eigenvector of L v = lambda D v; isolated nodes (no constraint) keep their value.
        fiedler = torch.where(degree > 0, fiedler * _inv_sqrt(degree), fiedler)
        fiedler = fiedler / torch.linalg.vector_norm(fiedler, dim=-1, keepdim=True).clamp_min(eps)
    # The largest-magnitude entry is positive.
    sign = fiedler.gather(-1, fiedler.abs().argmax(-1, keepdim=True)).sign()
    return fiedler * torch.where(sign == 0, 1.0, sign)


# ------------------------------------------------------------------------------------------------ iterative


def _operator(
    sim_apply: Callable[[torch.Tensor], torch.Tensor], degree: torch.Tensor, laplacian: str
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, float]:
    """The shifted operator whose second-largest eigenvector is the Fiedler vector (as a function of a block
    ``[N, B, p]``), its known top eigenvector and a lower bound of its spectrum.

    The operator is never formed: scaling the block before and after the product with the similarity costs
    ``O(B p)``, a new ``[N, B, B]`` matrix as much as a product.
    """
    b = degree.shape[-1]
    if laplacian == "plain":
        # I - L / c with c = 2 max(d) >= the largest eigenvalue of L: spectrum in [0, 1], top eigenvector 1.
        c = (2.0 * degree.amax(-1, keepdim=True)).clamp_min(torch.finfo(degree.dtype).tiny)
        inv_c, keep = c.reciprocal().unsqueeze(-1), (1.0 - degree / c).unsqueeze(-1)
        trivial = torch.full_like(degree, b**-0.5)
        return (lambda v: sim_apply(v) * inv_c + keep * v), trivial, 0.0
    inv_sqrt = _inv_sqrt(degree).unsqueeze(-1)
    trivial = degree.sqrt()
    trivial = trivial / torch.linalg.vector_norm(trivial, dim=-1, keepdim=True).clamp_min(torch.finfo(degree.dtype).eps)
    return (lambda v: inv_sqrt * sim_apply(inv_sqrt * v)), trivial, -1.0


def _deflate(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Project the known top eigenvector ``t`` ``[N, B]`` out of the columns of ``v`` ``[N, B, p]``."""
    return v - t.unsqueeze(-1) * (t.unsqueeze(-2) @ v)


def _start(trivial: torch.Tensor, p: int) -> torch.Tensor:
    # A fixed seed: the same graph always gets the same start, hence the same answer, and the caller's random
    # streams are untouched.
    gen = torch.Generator(device=trivial.device).manual_seed(0)
    v = torch.randn(*trivial.shape, p, generator=gen, device=trivial.device, dtype=trivial.dtype)
    return torch.linalg.qr(_deflate(v, trivial)).Q


def _rayleigh_ritz(v: torch.Tensor, av: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values (descending), Ritz vectors and their images under the operator."""
    h = v.mT @ av
    theta, w = torch.linalg.eigh(0.5 * (h + h.mT))
    theta, w = theta.flip(-1), w.flip(-1)
    return theta, v @ w, av @ w


def _subspace(
    op: Callable[[torch.Tensor], torch.Tensor], trivial: torch.Tensor, lower: torch.Tensor, p: int, iterations: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chebyshev-filtered subspace iteration: the leading Ritz vector, the two leading Ritz values and their
    residual norms.
    """
    # The known top eigenvector is projected out after every product: the filter grows it fastest of all, and
    # a rounding-level remnant would otherwise swamp the block within a few steps.
    def apply(v: torch.Tensor) -> torch.Tensor:
        return _deflate(op(v), trivial)

    v = _start(trivial, p)
    theta, x, ax = _rayleigh_ritz(v, apply(v))
    residual = torch.linalg.vector_norm(ax[..., :2] - x[..., :2] * theta[:, None, :2], dim=-2)
    for _ in range(iterations):
        if _host_reads_free(trivial.device) and bool((residual <= tol).all()):
            break  # a host decision is free on the CPU; elsewhere all steps run and nothing waits for the device
        # Damp [lower, smallest Ritz value]: everything below the block's span. The wanted values lie above it.
        upper = torch.maximum(theta[:, -1], lower + 1e-3).clamp(max=1.0)
        half = ((upper - lower) / 2).view(-1, 1, 1)
        mid = ((upper + lower) / 2).view(-1, 1, 1)
        prev, cur = x, (ax - mid * x) / half
        for _ in range(_DEGREE - 1):
            # Rescaling every column keeps the growing polynomial inside float32; the recurrence is linear.
            scale = torch.linalg.vector_norm(cur, dim=-2, keepdim=True).clamp_min(torch.finfo(cur.dtype).tiny)
            prev, cur = prev / scale, cur / scale
            prev, cur = cur, 2 * (apply(cur) - mid * cur) / half - prev
        v = torch.linalg.qr(_deflate(cur, trivial)).Q
        theta, x, ax = _rayleigh_ritz(v, apply(v))
        residual = torch.linalg.vector_norm(ax[..., :2] - x[..., :2] * theta[:, None, :2], dim=-2)
    return x[..., 0], theta[:, :2], residual


def _lobpcg(
    op: Callable[[torch.Tensor], torch.Tensor], trivial: torch.Tensor, iterations: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.lobpcg`` for the three largest eigenpairs (the trivial one first)."""
    # torch.lobpcg takes a matrix: form the operator from its action on the identity.
    b = trivial.shape[-1]
    matrix = op(torch.eye(b, dtype=trivial.dtype, device=trivial.device).expand(trivial.shape[0], b, b))
    matrix = 0.5 * (matrix + matrix.mT)
    start = torch.cat([trivial.unsqueeze(-1), _start(trivial, 2)], dim=-1)
    # torch.lobpcg stops on a relative residual and `niter` counts single steps: a step of a block of three.
    theta, x = torch.lobpcg(matrix, k=3, X=start, largest=True, tol=tol, niter=iterations * _DEGREE)
    theta, x = theta[:, 1:], x[..., 1:]
    residual = torch.linalg.vector_norm(op(x) - x * theta.unsqueeze(-2), dim=-2)
    # The trivial vector is not deflated here: the answer counts only if lobpcg found it as the top pair.
    residual = torch.where((trivial.unsqueeze(-2) @ x).abs().squeeze(-2) < 1e-3, residual, torch.inf)
    return x[..., 0], theta, residual


def _accept(
    theta: torch.Tensor, residual: torch.Tensor, degree: torch.Tensor, laplacian: str, tol: float, dtype: torch.dtype
) -> torch.Tensor:
    """Graphs whose iterative answer is the one eigh's path gives: converged, connected, simple Fiedler value."""
    eps = torch.finfo(dtype).eps
    # eigh's path calls Laplacian eigenvalues within sqrt(eps) * max(|largest|, 1) equal; the largest is at most 2
    # (normalized) or c = 2 max(d) (plain), so this threshold, with a margin, is never below the one eigh uses.
    if laplacian == "plain":
        c = 2.0 * degree.amax(-1)
        gap = 1.5 * eps**0.5 * c.clamp_min(1.0) / c.clamp_min(torch.finfo(dtype).tiny) + 4 * tol
    else:
        gap = torch.full_like(degree[:, 0], 3 * eps**0.5 + 4 * tol)
    converged = (residual <= tol).all(-1)
    connected = (1.0 - theta[:, 0]) > gap
    simple = (theta[:, 0] - theta[:, 1]) > gap
    no_isolated = (degree > 0).all(-1)
    return converged & connected & simple & no_isolated
