"""Fused column-parallel weights: several named projections in one matmul, each split over TP.

A fused in-projection computes [q | k | v | ...] with one GEMM and one sequence-parallel gather.
Rank r's weight holds the r-th slice of every component, in component order, so its output
splits into its local heads' q, k, v, ... directly. Plain Python (tensors only pass through
`split`), so the parameter table, and with it the planner, describe fused weights without torch;
models/parameters.py converts between this layout and the full per-component tensors (the
reference format), models/sharding.py gives its dist-checkpoint form.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

    def split(self, output: "torch.Tensor", tp_size: int) -> dict[str, "torch.Tensor"]:
        """A local output [..., width(tp)] -> {name: [..., size / tp]}."""
        return dict(zip(self.names, output.split(self.local_sizes(tp_size), dim=-1)))
