"""The model's configuration: the reference's hyper-parameters, named as our code uses them."""

from dataclasses import asdict, dataclass

import torch
from megatron.core.transformer import TransformerConfig

from megatron_ttt.ops import BACKENDS

LAYER_TYPES = ("linear", "mlp")
BACKBONES = ("transformer", "mamba")


@dataclass(frozen=True)
class TTTModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 768
    """D = num_heads * head_dim."""
    intermediate_size: int = 2048
    """Width of the SwiGLU MLP."""
    num_layers: int = 12
    num_heads: int = 12
    layer_type: str = "linear"
    """"linear": inner model z W + b; "mlp": two layers of width 4 * head_dim with tanh-GELU."""
    backbone: str = "mamba"
    """"mamba": gate, shared q/k with convolutions and a pre-conv (the paper's main models);
    "transformer": none of the three."""
    mini_batch_size: int = 16
    """Tokens per inner-loop gradient step (b)."""
    ttt_base_lr: float = 1.0
    """Inner learning rate scale (the paper: 1.0 for Linear, 0.1 for MLP)."""
    rope_theta: float = 10000.0
    conv_kernel: int = 4
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    init_std: float = 0.02
    """Normal init of linears, embedding and inner weights (the reference's initializer_range)."""
    checkpoint_group: int = 0
    """Time-axis checkpointing: keep the inner state every G mini-batches, recompute inside (0: off)."""
    inner_loop_backend: str = "auto"
    """"auto": the fused Triton kernels on CUDA, the PyTorch dual form elsewhere; "triton" or "torch" forces one."""
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self):
        problems = []
        if self.layer_type not in LAYER_TYPES:
            problems.append(f"layer_type {self.layer_type!r} is not one of {LAYER_TYPES}")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone {self.backbone!r} is not one of {BACKBONES}")
        if self.inner_loop_backend not in BACKENDS:
            problems.append(f"inner_loop_backend {self.inner_loop_backend!r} is not one of {BACKENDS}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        if problems:
            raise ValueError("TTTModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def use_gate(self) -> bool:
        return self.backbone == "mamba"

    @property
    def share_qk(self) -> bool:
        return self.backbone == "mamba"

    @property
    def pre_conv(self) -> bool:
        return self.backbone == "mamba"

    @property
    def inner_widths(self) -> tuple[int, ...]:
        """Layer widths of the inner model per head: (d, d) or (d, 4d, d)."""
        d = self.head_dim
        return (d, d) if self.layer_type == "linear" else (d, 4 * d, d)

    def to_dict(self) -> dict:
        return asdict(self)


def megatron_config(model: TTTModelConfig, tensor_parallel: int = 1, sequence_parallel: bool = False,
                    params_dtype: torch.dtype = torch.float32, cpu_init: bool | None = None) -> TransformerConfig:
    """The megatron-core config the parallel layers read (sizes, TP/SP, dtype, init)."""
    return TransformerConfig(
        num_layers=model.num_layers, hidden_size=model.hidden_size, num_attention_heads=model.num_heads,
        ffn_hidden_size=model.intermediate_size, tensor_model_parallel_size=tensor_parallel,
        sequence_parallel=sequence_parallel and tensor_parallel > 1, params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16, fp16=params_dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available() if cpu_init is None else cpu_init,
        init_method_std=model.init_std, add_bias_linear=False, gated_linear_unit=True,
        normalization="RMSNorm", layernorm_epsilon=model.rms_norm_eps, gradient_accumulation_fusion=False,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, hidden_dropout=0.0, attention_dropout=0.0,
        cuda_graph_scope=[])
