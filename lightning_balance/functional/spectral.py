r"""
Spectral scores of a batch
^^^^^^^^^^^^^^^^^^^^^^^^^^

The scoring step of SALN (Sharifi, MLKD 2024, arXiv 2412.17069): build the cosine-similarity graph of the
samples of a batch, take its Laplacian, and score every sample from the **Fiedler vector** (the eigenvector
of the second-smallest eigenvalue), which splits the batch along its weakest cut.

The paper's Laplacian is the plain :math:`L = D - S` (``laplacian="plain"``); it leaves the other details open.
Each is an option of :func:`spectral_scores`, and the defaults (``laplacian="random_walk"``, ``negative="clamp"``,
``score="boundary"``) are the variant that trained best in ``benchmarks/saln_benchmark.py`` (numbers in
``docs/saln.md``); the default Laplacian is therefore not the paper's:

* ``laplacian``: ``"plain"`` :math:`L = D - S` (the paper's), ``"normalized"``
  :math:`L = I - D^{-1/2} S D^{-1/2}`, or ``"random_walk"`` (the normalized eigenvector mapped back by
  :math:`D^{-1/2}`, the relaxed normalised cut).
* ``negative``: cosine similarities below zero are clamped to 0 (``"clamp"``), shifted as :math:`(S+1)/2`
  (``"shift"``) or made positive (``"abs"``), so the graph has non-negative weights.
* ``score``: ``"magnitude"`` :math:`|f_i|` (far from the cut), ``"boundary"`` :math:`-|f_i - \mathrm{median}(f)|`
  (close to the balanced cut), ``"signed"`` :math:`f_i` (one side of the cut), or ``"labels"`` (how much a sample
  sits on the same side as the rest of its class: :math:`f_i \cdot \mathrm{mean}_{j \ne i, y_j = y_i} f_j`).

Conventions that make the scores well defined:

* The cosine similarity of an all-zero vector with anything is 0; the graph has no self-loops. Scaling a row
  does not change its similarities, however large or small the values (each row is divided by its largest
  absolute value before it is normalised). NaN and inf features are rejected.
* The sign of an eigenvector is arbitrary; ``magnitude``, ``boundary`` and ``labels`` do not depend on it, and
  ``signed`` makes the largest-magnitude entry positive (a perfectly symmetric batch, whose largest entries tie
  with opposite signs, has no side that an order-free rule could prefer).
* When the second-smallest eigenvalue is repeated (a disconnected graph, duplicated samples), the Fiedler
  vector is not unique; :mod:`~lightning_balance.functional.fiedler` says which vector of the Fiedler subspace is
  used (one that does not depend on the eigensolver's basis or on the order of the samples).
* The eigensolver is ``solver``: ``"auto"`` (default) picks a full ``torch.linalg.eigh`` for small batches and on
  GPUs, and Chebyshev-filtered subspace iteration for batches of
  :data:`~lightning_balance.functional.fiedler.AUTO_SUBSPACE_MIN_SIZE` or more on the CPU, which hands every
  graph it cannot resolve to ``eigh``; see :func:`~lightning_balance.functional.fiedler.fiedler_vectors`.
* Batches of fewer than 3 samples have no cut worth the name: every score is 0.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, cast

import torch

from lightning_balance.functional.fiedler import (
    _FIEDLER_METHODS,
    FiedlerMethod,
    _cosine_graph_solve,
    _fiedler_eigh,
    _host_reads_free,
    fiedler_vectors,
    resolve_fiedler_method,
)

__all__ = ["spectral_scores", "LaplacianKind", "NegativeSimilarity", "SpectralScore"]

LaplacianKind = Literal["plain", "normalized", "random_walk"]
NegativeSimilarity = Literal["clamp", "shift", "abs"]
SpectralScore = Literal["magnitude", "boundary", "signed", "labels"]

_LAPLACIANS = ("plain", "normalized", "random_walk")
_NEGATIVES = ("clamp", "shift", "abs")
_SCORES = ("magnitude", "boundary", "signed", "labels")


def _validate_options(
    laplacian: str, negative: str, score: str, labels: Optional[torch.Tensor], solver: str = "auto"
) -> None:
    for name, value, allowed in (
        ("laplacian", laplacian, _LAPLACIANS),
        ("negative", negative, _NEGATIVES),
        ("score", score, _SCORES),
        ("solver", solver, _FIEDLER_METHODS),
    ):
        if value not in allowed:
            raise ValueError(f"Expected argument `{name}` to be one of {allowed}, but got {value!r}.")
    if score == "labels" and labels is None:
        raise ValueError("`score='labels'` needs the class of every sample: pass `labels=` with shape [..., B].")


def _validate_tensors(features: torch.Tensor, labels: Optional[torch.Tensor]) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"Expected argument `features` to be a torch.Tensor, but got {type(features).__name__}.")
    if features.ndim < 2:
        raise RuntimeError(
            f"Expected argument `features` to have shape [..., B, D] (one row per sample), but got shape"
            f" {tuple(features.shape)}. Use `features.unsqueeze(-1)` for one scalar feature per sample."
        )
    if features.is_complex():
        raise TypeError(f"Expected argument `features` to be real, but got dtype {features.dtype}.")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != features.shape[:-1]:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise RuntimeError(
                f"Expected argument `labels` to be a tensor of shape {tuple(features.shape[:-1])} (one label per"
                f" row of `features`), but got {shape}."
            )


def _validate_finite(features: torch.Tensor, peak: torch.Tensor) -> None:
    """``peak`` is ``features.abs().amax(-1)``: NaN and inf survive the maximum, so it is all that needs a look."""
    if not features.is_floating_point() or features.shape[-1] == 0:
        return
    if not _host_reads_free(features.device):
        # Reading the verdict on the host would synchronise with the device at every step: check on the device.
        torch._assert_async(torch.isfinite(peak).all(), "Expected argument `features` of spectral_scores to be finite.")
        return
    if not bool(torch.isfinite(peak).all()):
        bad = int((~torch.isfinite(peak)).sum())
        raise ValueError(
            f"Expected argument `features` to be finite, but {bad} of its rows hold NaN or inf values. Drop those"
            " samples or replace the values (e.g. `torch.nan_to_num(features)`) before scoring."
        )


def _gram(unit: torch.Tensor) -> torch.Tensor:
    """``unit @ unit.mT``, exactly symmetric; on the CPU from strips of its upper triangle.

    A CPU matrix product of ``[B, D]`` by ``[D, B]`` does not know that its result is symmetric. Four strips of
    rows, each multiplied only from its diagonal block rightwards and mirrored below, are 10/16 of the work (1.3x to
    1.7x faster at B = 1024, D = 512 on one core, and the same values).
    """
    b = unit.shape[-2]
    if unit.device.type != "cpu" or b < 512:
        gram = unit @ unit.mT
        return 0.5 * (gram + gram.mT)
    edges = [round(i * b / 4) for i in range(5)]
    out = unit.new_empty((*unit.shape[:-2], b, b))
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        torch.matmul(unit[..., lo:hi, :], unit[..., lo:, :].mT, out=out[..., lo:hi, lo:])
        out[..., hi:, lo:hi] = out[..., lo:hi, hi:].mT
    return out


def _unit_rows(x: torch.Tensor, peak: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows scaled to unit length (zero rows stay zero); ``peak`` is ``x.abs().amax(-1, keepdim=True)`` if known."""
    # Cosine similarity does not depend on scale: dividing every row by its largest absolute value first keeps the
    # norms in [1, sqrt(D)], so they neither overflow (values above ~1e19 in float32) nor underflow (~1e-30).
    # Per-row factors ([N, B, 1]) do the work of element-wise `where`s on [N, B, D].
    if x.shape[-1] > 0:
        peak = _peak(x) if peak is None else peak
        x = x * torch.where(peak > 0, peak, torch.ones_like(peak)).reciprocal()
    else:
        x = x.clone()
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    # A zero row stays zero, so its cosine similarity with everything is 0 instead of 0/0.
    return x.mul_(torch.where(norms > 0, norms.clamp_min(torch.finfo(x.dtype).tiny).reciprocal(), 0.0))


def _peak(x: torch.Tensor) -> torch.Tensor:
    """The largest absolute value of every row, ``[..., B, 1]``, without an ``[..., B, D]`` temporary."""
    return torch.linalg.vector_norm(x, ord=math.inf, dim=-1, keepdim=True)


def _similarity(x: torch.Tensor, negative: str, peak: Optional[torch.Tensor] = None, *, unit: bool = False
                ) -> torch.Tensor:
    """Non-negative cosine-similarity graph ``[N, B, B]`` without self-loops (of rows already of unit length
    when ``unit``).
    """
    rows = x if unit else _unit_rows(x, peak)
    # In place from here on: each fresh [N, B, B] temporary costs as much as the arithmetic on it.
    sim = _gram(rows).clamp_(-1.0, 1.0)
    if negative == "clamp":
        sim.clamp_(min=0.0)
    elif negative == "shift":
        sim.add_(1.0).mul_(0.5)
    else:
        sim.abs_()
    sim.diagonal(dim1=-2, dim2=-1).zero_()
    return sim


def _fiedler(
    x: torch.Tensor, peak: Optional[torch.Tensor], laplacian: str, negative: str, solver: FiedlerMethod
) -> torch.Tensor:
    """Fiedler vectors of the cosine graphs of ``x`` ``[N, B, D]``.

    Subspace iteration runs on what the features prove about the graph (a tighter spectrum floor); when the graph
    is a low-rank matrix off its diagonal (``negative="shift"`` always, ``"clamp"`` when no feature is negative,
    so no cosine is) and ``D <= B``, its products go through the ``[B, D]`` unit rows and the ``B x B`` graph is
    never built (it is, for the graphs handed to ``eigh``).
    """
    n, b, d = x.shape
    unit = _unit_rows(x, peak)
    method = resolve_fiedler_method(solver, b, x.device)
    if method != "subspace" or b < 8 or d == 0:
        return cast(torch.Tensor, fiedler_vectors(_similarity(unit, negative, unit=True), laplacian, method=solver))
    low_rank = d <= b and (negative == "shift" or (negative == "clamp" and not bool(unit.amin() < 0)))
    sim = None if low_rank else _similarity(unit, negative, unit=True)

    def eigh_rows(rows: torch.Tensor) -> torch.Tensor:
        graphs = _similarity(unit[rows], negative, unit=True) if sim is None else sim[rows]
        return _fiedler_eigh(graphs, laplacian)

    return _cosine_graph_solve(unit, negative, laplacian, sim, eigh_rows)


def _score(fiedler: torch.Tensor, score: str, labels: Optional[torch.Tensor]) -> torch.Tensor:
    if score == "magnitude":
        return fiedler.abs()
    if score == "signed":
        return fiedler
    if score == "boundary":
        # The mean of the two middle values is odd in f (median(-f) = -median(f)), so the score does not see the
        # sign; a sort has no size limit, unlike torch.quantile.
        ordered = fiedler.sort(dim=-1).values
        b = fiedler.shape[-1]
        median = 0.5 * (ordered[..., (b - 1) // 2] + ordered[..., b // 2])
        return -(fiedler - median.unsqueeze(-1)).abs()
    if labels is None:  # unreachable through spectral_scores, which checks it first
        raise ValueError("`score='labels'` needs `labels=`.")
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    same = same & ~torch.eye(same.shape[-1], dtype=torch.bool, device=same.device)
    same = same.to(fiedler.dtype)
    class_mean = (same @ fiedler.unsqueeze(-1)).squeeze(-1) / same.sum(-1).clamp_min(1.0)
    return fiedler * class_mean


def spectral_scores(
    features: torch.Tensor,
    *,
    laplacian: LaplacianKind = "random_walk",
    negative: NegativeSimilarity = "clamp",
    score: SpectralScore = "boundary",
    labels: Optional[torch.Tensor] = None,
    solver: FiedlerMethod = "auto",
) -> torch.Tensor:
    r"""Score every sample of a batch (or of a stack of batches) from its Fiedler vector.

    All batches are scored by one batched solve on the features' device; there is no Python loop over batches.
    Keep the samples with the highest scores.

    Args:
        features: ``[..., B, D]`` features, one row per sample; leading dimensions are independent batches.
            Integer and half-precision features are scored in float32, float64 features in float64.
        laplacian: ``"random_walk"`` (default), ``"normalized"`` or ``"plain"`` (the paper's :math:`D - S`; see the
            module docstring).
        negative: how negative cosine similarities become edge weights: ``"clamp"`` (default), ``"shift"`` or
            ``"abs"``.
        score: ``"boundary"`` (default: keep the samples closest to the cut), ``"magnitude"``, ``"signed"`` or
            ``"labels"``.
        labels: ``[..., B]`` class (or group) of every sample; needed only by ``score="labels"``.
        solver: the eigensolver, ``"auto"`` (default), ``"eigh"``, ``"subspace"`` or ``"lobpcg"``; see
            :func:`~lightning_balance.functional.fiedler.fiedler_vectors`.

    Returns:
        ``[..., B]`` scores (float32, or float64 for float64 features), on the features' device. Permuting the
        samples of a batch permutes their scores.

    Raises:
        ValueError: an unknown option, ``score="labels"`` without ``labels``, or NaN / inf in ``features``.
        RuntimeError: ``features`` is not ``[..., B, D]`` or ``labels`` does not match it.

    Example:
        >>> import torch
        >>> features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9], [0.0, 1.0]])
        >>> spectral_scores(features).round(decimals=2)  # the middle sample sits on the cut: kept first
        tensor([-0.4100, -0.3200, -0.0000, -0.5700, -0.6700])
        >>> spectral_scores(features, score="magnitude").round(decimals=2)  # far from the cut first
        tensor([0.4800, 0.3900, 0.0700, 0.5000, 0.6000])
        >>> spectral_scores(torch.randn(8, 16, 4)).shape  # eight batches of 16 samples, scored at once
        torch.Size([8, 16])
    """
    _validate_options(laplacian, negative, score, labels, solver)
    _validate_tensors(features, labels)
    *batch_shape, b, d = features.shape
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    x = features.detach().to(dtype).reshape(math.prod(batch_shape), b, d)
    peak = _peak(x) if d > 0 else None
    if peak is not None:
        _validate_finite(x, peak)
    if b < 3:
        return torch.zeros(features.shape[:-1], dtype=dtype, device=features.device)
    fiedler = _fiedler(x, peak, laplacian, negative, solver)
    flat_labels = None if labels is None else labels.detach().reshape(math.prod(batch_shape), b).to(x.device)
    return _score(fiedler, score, flat_labels).reshape(*batch_shape, b)
