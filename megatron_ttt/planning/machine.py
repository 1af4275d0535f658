"""This machine's limits, measured now: the dense matmul rate (the peak that MFU divides by) and
the copy bandwidth (the floor of memory-bound work such as decoding).

Measured rather than taken from a datasheet so that MFU means the same on a laptop, a CPU node and
a GPU: the fraction of what this device, at these threads and this dtype, does at its best.
"""

import statistics
import time

import torch

def matmul_size(device: str, dtype: torch.dtype) -> int:
    """A square matmul large enough for the device's plateau, small enough to time in seconds: most
    CPUs only emulate bf16 (no AVX-512 BF16), hundreds of times slower than fp32."""
    if device == "cuda":
        return 8192
    return 2048 if dtype == torch.float32 else 512


def median_seconds(fn, repeats: int, device: str = "cpu") -> float:
    """Median seconds of fn() over `repeats` calls after a warm-up call (synchronised on CUDA)."""
    fn()  # warm-up: allocation, kernel selection
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_tflops(device: str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """TFLOP/s of one large square matmul in `dtype` at torch's current threads: the MFU peak."""
    n = matmul_size(device, dtype)
    a = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ a, repeats, device) / 1e12


def copy_gbps(device: str = "cpu", megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of copying a buffer larger than the caches (bytes read plus bytes written)."""
    x = torch.empty(megabytes * 2**20 // 4, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / median_seconds(lambda: y.copy_(x), repeats, device) / 1e9
