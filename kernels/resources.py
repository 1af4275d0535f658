"""What a fused kernel needs from a GPU, found by compiling it for that GPU's architecture.

Triton only finds out at launch that a kernel needs more shared memory than the GPU has; a
backward that does not fit would then fail after its forward ran. `shared_memory_shortfall`
compiles both kernels first (no GPU is needed to compile, so the tests and
`benchmarks/kernels.py --resources` can do it for any architecture).
"""

import inspect
from functools import lru_cache

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

INT_ARGS = ("T", "H", "mini_batch", "n_blocks")
TENSOR_ARGS = ("q_ptr", "k_ptr", "v_ptr", "lr_ptr", "z_ptr", "dz_ptr", "dq_ptr", "dk_ptr", "dv_ptr", "dlr_ptr")
"""Pointers in the inputs' dtype; every other pointer but the reset flags is fp32 (state,
checkpoints, reductions)."""
FLAG_ARGS = ("resets_ptr",)
"""int8 pointers: which mini-batches restart from the initial weights."""
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def signature(kernel, dtype: torch.dtype, constexprs: dict) -> dict[str, str]:
    """Triton's type of every argument of a fused kernel, inputs in dtype."""
    types = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in INT_ARGS:
            types[name] = "i32"
        elif name in FLAG_ARGS:
            types[name] = "*i8"
        else:
            types[name] = "*" + (TRITON_DTYPES[dtype] if name in TENSOR_ARGS else "fp32")
    return types


@lru_cache(maxsize=None)
def shared_memory(kernel, dtype: torch.dtype, constexprs: tuple, target: GPUTarget, num_warps: int = 4) -> int:
    """Bytes of shared memory one program of the kernel needs on target (compiled, then cached)."""
    consts = dict(constexprs)
    compiled = triton.compile(ASTSource(kernel, signature(kernel, dtype, consts), consts), target=target,
                              options={"num_warps": num_warps})
    return compiled.metadata.shared


def shared_memory_shortfall(kernels, dtype: torch.dtype, meta: dict, target: GPUTarget, available: int) -> str | None:
    """Why these kernels cannot launch with `available` bytes of shared memory, or None if they can."""
    consts = tuple(sorted(meta.items()))
    need = {k.fn.__name__: shared_memory(k, dtype, consts, target) for k in kernels}
    over = {name: n for name, n in need.items() if n > available}
    if not over:
        return None
    return ", ".join(f"{name} needs {n} bytes of shared memory" for name, n in over.items()) + \
        f"; the GPU has {available} per block"


def current_target(device: torch.device) -> tuple[GPUTarget, int]:
    """The architecture of a CUDA device and its opt-in shared memory per block."""
    properties = torch.cuda.get_device_properties(device)
    target = GPUTarget("cuda", properties.major * 10 + properties.minor, 32)
    return target, properties.shared_memory_per_block_optin
