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
  vector is not unique. The trivial eigenvector is known in closed form (:math:`\mathbf{1}` or
  :math:`D^{1/2}\mathbf{1}`), so it is projected out of the eigenspace of the smallest eigenvalues, leaving the
  Fiedler *subspace* with projector :math:`P`. If it is one-dimensional, :math:`f` is its unit vector. Otherwise
  :math:`f` is the projection :math:`P d` of the degree vector (normalised), and if that vanishes,
  :math:`f_i = \sqrt{P_{ii}}`, the length of sample ``i``'s spectral embedding. All three are independent of the
  eigensolver's choice of basis and of the order of the samples.
* Batches of fewer than 3 samples have no cut worth the name: every score is 0.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch

__all__ = ["spectral_scores", "LaplacianKind", "NegativeSimilarity", "SpectralScore"]

LaplacianKind = Literal["plain", "normalized", "random_walk"]
NegativeSimilarity = Literal["clamp", "shift", "abs"]
SpectralScore = Literal["magnitude", "boundary", "signed", "labels"]

_LAPLACIANS = ("plain", "normalized", "random_walk")
_NEGATIVES = ("clamp", "shift", "abs")
_SCORES = ("magnitude", "boundary", "signed", "labels")


def _validate_options(laplacian: str, negative: str, score: str, labels: Optional[torch.Tensor]) -> None:
    for name, value, allowed in (
        ("laplacian", laplacian, _LAPLACIANS),
        ("negative", negative, _NEGATIVES),
        ("score", score, _SCORES),
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


def _validate_finite(features: torch.Tensor) -> None:
    if features.is_floating_point() and not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).any(-1).sum())
        raise ValueError(
            f"Expected argument `features` to be finite, but {bad} of its rows hold NaN or inf values. Drop those"
            " samples or replace the values (e.g. `torch.nan_to_num(features)`) before scoring."
        )


def _similarity(x: torch.Tensor, negative: str) -> torch.Tensor:
    """Non-negative cosine-similarity graph ``[N, B, B]`` without self-loops."""
    # Cosine similarity does not depend on scale: dividing every row by its largest absolute value first keeps the
    # norms in [1, sqrt(D)], so they neither overflow (values above ~1e19 in float32) nor underflow (~1e-30).
    if x.shape[-1] > 0:
        peak = x.abs().amax(dim=-1, keepdim=True)
        x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    # A zero row stays zero, so its cosine similarity with everything is 0 instead of 0/0.
    unit = torch.where(norms > 0, x / norms.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
    sim = (unit @ unit.mT).clamp(-1.0, 1.0)
    if negative == "clamp":
        sim = sim.clamp_min(0.0)
    elif negative == "shift":
        sim = (sim + 1.0) * 0.5
    else:
        sim = sim.abs()
    return sim * (1.0 - torch.eye(sim.shape[-1], dtype=sim.dtype, device=sim.device))


def _fiedler_vector(sim: torch.Tensor, laplacian: str) -> torch.Tensor:
    """A Fiedler vector of every graph in ``sim`` ``[N, B, B]``, chosen as described in the module docstring."""
    n, b, _ = sim.shape
    eps = torch.finfo(sim.dtype).eps
    degree = sim.sum(-1)
    if laplacian == "plain":
        lap = torch.diag_embed(degree) - sim
        trivial = torch.full_like(degree, b**-0.5)
    else:
        # Isolated nodes get D^{-1/2} = 0: the Laplacian D^{-1/2} (D - S) D^{-1/2} then has a zero row there, so an
        # isolated node is its own connected component, as it is under the plain Laplacian.
        inv_sqrt = torch.where(degree > 0, degree.clamp_min(torch.finfo(sim.dtype).tiny).rsqrt(), 0.0)
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
    if laplacian == "random_walk":
        # Generalised eigenvector of L v = lambda D v; isolated nodes (no constraint) keep their value.
        fiedler = torch.where(degree > 0, fiedler * inv_sqrt, fiedler)
        fiedler = fiedler / torch.linalg.vector_norm(fiedler, dim=-1, keepdim=True).clamp_min(eps)
    # Fix the arbitrary sign: the largest-magnitude entry is positive.
    sign = fiedler.gather(-1, fiedler.abs().argmax(-1, keepdim=True)).sign()
    return fiedler * torch.where(sign == 0, 1.0, sign)


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
) -> torch.Tensor:
    r"""Score every sample of a batch (or of a stack of batches) from its Fiedler vector.

    All batches are scored by one batched eigendecomposition on the features' device; there is no Python loop
    over batches. Keep the samples with the highest scores.

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
    _validate_options(laplacian, negative, score, labels)
    _validate_tensors(features, labels)
    _validate_finite(features)
    *batch_shape, b, d = features.shape
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    if b < 3:
        return torch.zeros(features.shape[:-1], dtype=dtype, device=features.device)
    x = features.detach().to(dtype).reshape(math.prod(batch_shape), b, d)
    fiedler = _fiedler_vector(_similarity(x, negative), laplacian)
    flat_labels = None if labels is None else labels.detach().reshape(math.prod(batch_shape), b).to(x.device)
    return _score(fiedler, score, flat_labels).reshape(*batch_shape, b)
