"""A seeded pseudo-random permutation of [0, n) computed pointwise, in O(1) memory.

The loader needs, per epoch, a shuffled order of every sample of a dataset that may hold
billions of them, evaluated at arbitrary positions (a rank's slice of a global batch, or the
position a resumed run starts from). A balanced Feistel network over the smallest even-bit
domain >= n is a bijection; cycle walking maps the values that fall outside [0, n) back in.
"""

import numpy as np

_ROUNDS = 4


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast, well-diffusing 64-bit hash (arithmetic modulo 2**64)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        self.n = n
        self.half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
        self.half_mask = np.uint64((1 << self.half_bits) - 1)
        self.keys = [_mix(np.uint64((seed + 0x9E3779B97F4A7C15 * (r + 1)) % 2**64)) for r in range(_ROUNDS)]

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half_bits)
        left, right = x >> shift, x & self.half_mask
        for key in self.keys:
            left, right = right, left ^ (_mix(right ^ key) & self.half_mask)
        return (left << shift) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The permuted value of each position (int64 array in [0, n))."""
        x = np.asarray(positions, dtype=np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.n):
            raise IndexError(f"positions must lie in [0, {self.n})")
        y = self._round_trip(x.astype(np.uint64))
        outside = y >= np.uint64(self.n)
        while outside.any():
            y[outside] = self._round_trip(y[outside])
            outside = y >= np.uint64(self.n)
        return y.astype(np.int64)
