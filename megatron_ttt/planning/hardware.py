"""The accelerators a plan can target (datasheet values) and the assumptions of the estimate.

Sources (NVIDIA datasheets; dense, i.e. without structured sparsity):
- A100 SXM4 80GB / 40GB: "NVIDIA A100 Tensor Core GPU" datasheet (2021): BF16 312 TFLOP/s,
  FP32 19.5 TFLOP/s, HBM2e 2,039 GB/s (80GB) and HBM2 1,555 GB/s (40GB), NVLink 600 GB/s
  (both directions together, so 300 GB/s each way).
- H100 SXM5 80GB: "NVIDIA H100 Tensor Core GPU" datasheet: BF16 989 TFLOP/s dense (1,979 with
  sparsity), FP32 67 TFLOP/s, HBM3 3.35 TB/s, NVLink 900 GB/s (450 GB/s each way).
- H200 SXM 141GB: "NVIDIA H200 Tensor Core GPU" datasheet: same compute as H100 SXM, HBM3e
  4.8 TB/s, 141 GB, NVLink 900 GB/s.
Inter-node bandwidth is the DGX/HGX reference design's one InfiniBand adapter per GPU: HDR 200 Gb/s
(25 GB/s) for A100 systems, NDR 400 Gb/s (50 GB/s) for H100/H200 systems.
Usable memory is what `nvidia-smi` reports as the total (80 GiB, 40 GiB, 79.6 GiB, 140.4 GiB).
"cpu" stands for this repository's CPU runs: no datasheet; its numbers are nominal (two cores).
"""

from dataclasses import dataclass, fields

from megatron_ttt.errors import UserInputError

GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    """Device memory the allocator can use before the CUDA context, GiB."""
    bf16_tflops: float
    """Dense bf16 tensor-core matmul peak, TFLOP/s."""
    fp32_tflops: float
    """Dense fp32 (non-tensor-core) peak, TFLOP/s."""
    hbm_gbps: float
    """Memory bandwidth, GB/s."""
    nvlink_gbps: float
    """Intra-node bandwidth per GPU, one direction, GB/s."""
    ib_gbps: float
    """Inter-node bandwidth per GPU, one direction, GB/s."""


GPUS = {g.name: g for g in (
    GPU("a100-80gb", 80.0, 312.0, 19.5, 2039.0, 300.0, 25.0),
    GPU("a100-40gb", 40.0, 312.0, 19.5, 1555.0, 300.0, 25.0),
    GPU("h100-80gb", 79.6, 989.0, 67.0, 3350.0, 450.0, 50.0),
    GPU("h200", 140.4, 989.0, 67.0, 4800.0, 450.0, 50.0),
    GPU("cpu", 24.0, 0.2, 0.2, 20.0, 5.0, 5.0),
)}


def gpu(name: str) -> GPU:
    if name not in GPUS:
        raise UserInputError(f"--gpu {name!r}: choose one of {', '.join(GPUS)}")
    return GPUS[name]


@dataclass(frozen=True)
class Assumptions:
    """What the estimate assumes beyond the datasheet; each is a `--assume key=value`."""

    matmul_efficiency: float = 0.6
    """Fraction of the matmul peak reached by the projections, MLP and head (large GEMMs)."""
    ttt_efficiency: float = 0.15
    """Fraction of the matmul peak reached by the TTT inner loop (b x d batched matmuls of the
    PyTorch dual form: small, launch- and bandwidth-bound)."""
    link_efficiency: float = 0.7
    """Fraction of the link bandwidth that collectives reach (NCCL bus bandwidth)."""
    dp_overlap: float = 0.5
    """Fraction of the data-parallel (ZeRO) communication hidden behind the backward."""
    tp_overlap: float = 0.0
    """Fraction of the tensor-parallel communication hidden behind compute."""
    cuda_context_gib: float = 1.0
    """Memory outside the allocator: CUDA context, NCCL's own buffers (0 on the CPU)."""
    fragmentation: float = 0.10
    """Margin over the allocator's live bytes for its caching and fragmentation (0 on the CPU)."""
    reduce_bucket_elements: int = 500_000_000
    """DeepSpeed's zero_optimization.reduce_bucket_size (its default): ZeRO 1-3 allocate a gradient
    reduction buffer of this many elements."""
    prefetch_bucket_elements: int = 50_000_000
    """DeepSpeed's stage3_prefetch_bucket_size: ZeRO-3 parameters gathered ahead of use."""

    def with_overrides(self, pairs: list[str]) -> "Assumptions":
        """`key=value` strings -> a copy with those fields replaced."""
        kinds = {f.name: f.type for f in fields(self)}
        values = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in kinds:
                raise UserInputError(f"--assume {pair!r}: expected key=value with key one of {', '.join(kinds)}")
            kind = int if kinds[key] in (int, "int") else float
            try:
                values[key] = kind(value)
            except ValueError:
                raise UserInputError(f"--assume {pair!r}: {value!r} is not a {kind.__name__}") from None
            if values[key] < 0:
                raise UserInputError(f"--assume {pair!r}: must be >= 0")
        return Assumptions(**{f.name: values.get(f.name, getattr(self, f.name)) for f in fields(self)})
