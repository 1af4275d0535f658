"""Fused column-parallel weights: several named projections in one matmul, each split over TP.

A fused in-projection computes [q | k | v | ...] with one GEMM and one sequence-parallel gather.
Rank r's weight holds the r-th slice of every component, in component order, so its output
splits into its local heads' q, k, v, ... directly. `shard`/`unshard` convert between that layout
and the full per-component tensors (the reference format, dist-checkpoint pieces).
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FusedColumns:
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    """Full (unsplit) output width of each component, in order."""

    def local_sizes(self, tp_size: int) -> list[int]:
        for name, size in zip(self.names, self.sizes):
            if size % tp_size:
                raise ValueError(f"component {name} of width {size} does not split over {tp_size} tensor-parallel ranks")
        return [size // tp_size for size in self.sizes]

    def width(self, tp_size: int = 1) -> int:
        return sum(self.local_sizes(tp_size))

    def split(self, output: torch.Tensor, tp_size: int) -> dict[str, torch.Tensor]:
        """A local output [..., width(tp)] -> {name: [..., size / tp]}."""
        return dict(zip(self.names, output.split(self.local_sizes(tp_size), dim=-1)))

    def shard(self, full: dict[str, torch.Tensor], tp_rank: int, tp_size: int) -> torch.Tensor:
        """Full component weights [size, in] -> rank `tp_rank`'s fused weight [width(tp), in]."""
        return torch.cat([full[n].chunk(tp_size, dim=0)[tp_rank] for n in self.names], dim=0)

    def unshard(self, local_weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's fused weight, in rank order -> the full component weights."""
        tp_size = len(local_weights)
        pieces = [w.split(self.local_sizes(tp_size), dim=0) for w in local_weights]
        return {n: torch.cat([p[i] for p in pieces], dim=0) for i, n in enumerate(self.names)}
