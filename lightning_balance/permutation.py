r"""
Keyed permutations
^^^^^^^^^^^^^^^^^^

A pseudo-random permutation of ``[0, n)`` that costs O(1) memory: a 4-round Feistel network over the smallest
power of two that holds ``n``, with *cycle walking* to stay inside ``[0, n)``. Position ``i`` of the permutation
keyed by ``key`` is :func:`permute` ``(i, n, key)``; nothing of size ``n`` is ever built, so a pass over a group of
10^12 examples starts as fast as a pass over 10.

The network is unbalanced when the bit width is odd (the two halves differ by one bit and swap roles every
round), so the domain is always the smallest power of two ``>= n`` and cycle walking takes fewer than two rounds
on average. The bit width comes from ``n - 1``: a width taken from ``n`` wastes a bit at powers of two, and an
off-by-one there is what breaks other implementations at ``n = 2^k + 1``.

All arithmetic is on ``uint64`` numpy arrays and every element may carry its own ``n`` and ``key``, so one call
serves a batch drawn from many groups and passes.
"""

from __future__ import annotations

from typing import Union

import numpy as np

__all__ = ["permute", "mix64", "derive_key", "bit_width"]

ArrayLike = Union[int, np.ndarray]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ROUNDS = 4  # even, so the halves end where they started
# Round keys are the key plus distinct odd constants: the key is already a full 64-bit hash, and the round function
# multiplies after mixing it in, so additive offsets give unrelated rounds at a fraction of a hash per element.
_ROUND_TAGS = [np.uint64(0x5851F42D4C957F2D * (2 * r + 1) % (1 << 64)) for r in range(_ROUNDS)]


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective 64-bit hash whose output bits all depend on every input bit."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def derive_key(*parts: ArrayLike) -> np.ndarray:
    """One 64-bit key per element from integer ``parts`` (scalars or arrays that broadcast), order-sensitive.

    Example:
        >>> int(derive_key(0, 1)[()]) != int(derive_key(1, 0)[()])
        True
    """
    key = np.zeros((), dtype=np.uint64)
    for part in parts:
        with np.errstate(over="ignore"):
            key = mix64(key ^ np.asarray(part).astype(np.uint64))
    return key


def _bit_width(n: np.ndarray) -> np.ndarray:
    """Bits needed for values in ``[0, n)``, at least 2 so both Feistel halves are non-empty."""
    bits = np.zeros(n.shape, dtype=np.uint64)
    rest = n - np.uint64(1)
    # The widest n is below 2^63: six halving steps find any width without a float log (exact for all n).
    for shift in (32, 16, 8, 4, 2, 1):
        s = np.uint64(shift)
        big = (rest >> s) > 0
        bits = np.where(big, bits + s, bits)
        rest = np.where(big, rest >> s, rest)
    bits = bits + (rest > 0)
    return np.maximum(bits, np.uint64(2))


def _round_keys(key: np.ndarray) -> list[np.ndarray]:
    with np.errstate(over="ignore"):
        return [key + tag for tag in _ROUND_TAGS]


def _feistel(x: np.ndarray, bits: np.ndarray, round_keys: list[np.ndarray]) -> np.ndarray:
    left_bits = bits // np.uint64(2)
    right_bits = bits - left_bits
    one = np.uint64(1)
    with np.errstate(over="ignore"):
        for round_key in round_keys:
            left, right = x >> right_bits, x & ((one << right_bits) - one)
            # The top `left_bits` bits of a two-multiply hash of (round key, right): a keyed round function.
            f = (right ^ round_key) * _M1
            f = (f ^ (f >> np.uint64(32))) * _M2
            new_right = (left + (f >> (np.uint64(64) - left_bits))) & ((one << left_bits) - one)
            x = (right << left_bits) | new_right
            left_bits, right_bits = right_bits, left_bits
    return x


def _take(a: np.ndarray, where: np.ndarray) -> np.ndarray:
    return a if a.ndim == 0 else a[where]


def bit_width(n: ArrayLike) -> np.ndarray:
    """The bit width :func:`permute` uses for permutations of size ``n`` (to precompute it per size)."""
    return _bit_width(np.asarray(n, dtype=np.uint64))


def permute(index: ArrayLike, n: ArrayLike, key: ArrayLike, bits: ArrayLike | None = None) -> np.ndarray:
    """Position ``index`` of the permutation of ``[0, n)`` keyed by ``key``, elementwise.

    Args:
        index: positions in ``[0, n)``.
        n: the size of each permutation (``1 <= n < 2**62``), a scalar or one per element.
        key: a 64-bit key per permutation (see :func:`derive_key`), a scalar or one per element.
        bits: :func:`bit_width` of ``n``, when the caller has it already.

    Returns:
        A ``uint64`` array: for a fixed ``(n, key)``, a bijection of ``[0, n)``.

    Example:
        >>> import numpy as np
        >>> p = permute(np.arange(10), 10, derive_key(7))
        >>> sorted(p.tolist()) == list(range(10))
        True
        >>> bool((permute(np.arange(10), 10, derive_key(8)) != p).any())  # another key, another order
        True
    """
    index = np.asarray(index, dtype=np.uint64)
    n_arr = np.asarray(n, dtype=np.uint64)
    key_arr = np.asarray(key, dtype=np.uint64)
    shape = np.broadcast_shapes(index.shape, n_arr.shape, key_arr.shape)
    if (index >= n_arr).any():
        raise ValueError("`index` must lie in [0, n) for every element.")
    # Round keys are hashed once per distinct argument shape, not once per round and element.
    keys = _round_keys(key_arr)
    bits = _bit_width(n_arr) if bits is None else np.asarray(bits, dtype=np.uint64)
    out = _feistel(np.broadcast_to(index, shape), bits, keys)
    # Cycle walking: the domain is < 2n, so each step leaves [0, n) with probability < 1/2.
    outside = np.flatnonzero(out >= n_arr)
    if outside.size:

        def flat(a: np.ndarray) -> np.ndarray:
            # Scalars stay scalars: gathering a broadcast copy per walk step would cost more than the walk.
            return a if a.ndim == 0 else np.broadcast_to(a, shape).reshape(-1)

        n_flat, bits_flat, keys_flat = flat(n_arr), flat(bits), [flat(k) for k in keys]
        values = out.reshape(-1)
        while outside.size:
            walked = _feistel(values[outside], _take(bits_flat, outside), [_take(k, outside) for k in keys_flat])
            values[outside] = walked
            outside = outside[walked >= _take(n_flat, outside)]
        out = values.reshape(shape)
    return out
