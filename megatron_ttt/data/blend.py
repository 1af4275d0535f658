"""Which source each position of a blended sample stream reads, in closed form.

A blend of K sources with weights w_s assigns every global position p (the loader's only state)
to a source. The assignment repeats with a period of N = 2**20 positions in which source s has
n_s = w_s N positions (rounded by largest remainder, so the n_s sum to N; weights are followed
to within 1e-6). Inside a period the j-th position of source s has the time (j + 1/2) / n_s, and
the positions go to the sources in the order of their times (ties to the earlier source): the
Sainte-Lague divisor rule, which spreads each source evenly. Over any window of positions,
not only from the start, each source's count stays less than two samples from its weight
times the window (at most one for two sources); tests/data/test_blend.py measures it.

Megatron-LM's blended index picks, at each position, the source furthest behind its weight: the
same evenness, but computed sequentially up to the run's length. The period here gives the same
guarantees with O(1) random access, so a resumed run or a rank of another data-parallel size
finds any position's source and its place in that source's own stream without replaying the
stream.
"""

import numpy as np

PERIOD = 2**20


def quotas(weights: list[float], period: int = PERIOD) -> np.ndarray:
    """Positions per period for each source: the weights normalized, scaled and rounded by largest
    remainder so that they sum to `period`."""
    w = np.asarray(weights, dtype=np.float64)
    if not (w > 0).all():
        raise ValueError(f"blend weights must be positive, got {list(weights)}")
    raw = w / w.sum() * period
    n = np.floor(raw).astype(np.int64)
    n[np.argsort(-(raw - n), kind="stable")[:period - int(n.sum())]] += 1
    if not (n > 0).all():
        raise ValueError(f"blend weights {list(weights)}: each must be at least 1/{period} of their sum")
    return n


class BlendSchedule:
    """Position -> (source, index in that source's own stream), for positions of any size."""

    def __init__(self, weights: list[float], period: int = PERIOD):
        self.counts = quotas(weights, period) if len(weights) > 1 else np.array([1])
        self.period = int(self.counts.sum())
        times = np.concatenate([(2 * np.arange(n) + 1) / (2 * n) for n in self.counts])
        sources = np.repeat(np.arange(len(self.counts)), self.counts)
        self.source = sources[np.argsort(times, kind="stable")].astype(np.int32)
        """Source of each position of a period."""
        self.rank = np.empty(self.period, dtype=np.int64)
        """Index of each position among its source's positions in the period."""
        for s in range(len(self.counts)):
            at = self.source == s
            self.rank[at] = np.arange(int(at.sum()))

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, index within the source's stream) of each global position."""
        periods, offsets = np.divmod(np.asarray(positions, dtype=np.int64), self.period)
        sources = self.source[offsets]
        return sources, periods * self.counts[sources] + self.rank[offsets]

    def consumed(self, positions: int) -> np.ndarray:
        """Samples each source gave to the first `positions` positions."""
        periods, offset = divmod(int(positions), self.period)
        head = np.bincount(self.source[:offset], minlength=len(self.counts))
        return periods * self.counts + head
