"""The model wrapped in a DeepSpeed engine: ZeRO over the data-parallel group, AdamW, clipping."""

import os
import sys
from pathlib import Path

import torch

from megatron_ttt.config import PretrainConfig
from megatron_ttt.errors import UserInputError
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.parallel.deepspeed_mpu import MegatronMpu

# DeepSpeed JIT-compiles a CPU communication op on first use (~1 minute). Keeping the build with
# the environment compiles it once per environment, not once per machine user or CI run.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

NO_DECAY = ("bias", "norm", "token_offset", ".b1", ".b2")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and inner weights, not on biases, norm gains and token offsets."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def gradient_accumulation(config: PretrainConfig, dp_size: int) -> int:
    data = config.data
    per_step = data.micro_batch_size * dp_size * data.seq_len
    if data.global_batch_tokens % per_step:
        raise UserInputError(f"data.global_batch_tokens={data.global_batch_tokens} is not a multiple of "
                             f"micro_batch_size x data-parallel size x seq_len = {per_step}")
    return data.global_batch_tokens // per_step


def deepspeed_config(config: PretrainConfig, dp_size: int) -> dict:
    opt, stage = config.optimizer, config.parallel.zero_stage
    if stage not in (0, 1, 2, 3):
        raise UserInputError(f"parallel.zero_stage={stage}: choose 0, 1, 2 or 3")
    if config.train.dtype not in ("fp32", "bf16"):
        raise UserInputError(f"train.dtype={config.train.dtype!r}: choose fp32 or bf16")
    return {
        "train_micro_batch_size_per_gpu": config.data.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation(config, dp_size),
        "optimizer": {"type": "AdamW", "params": {"lr": opt.lr, "betas": [opt.beta1, opt.beta2], "eps": opt.eps,
                                                  "weight_decay": opt.weight_decay}},
        "gradient_clipping": opt.grad_clip,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": config.train.dtype == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(model: TTTLanguageModel, config: PretrainConfig, dp_size: int):
    import deepspeed

    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=parameter_groups(model, config.optimizer.weight_decay),
        config=deepspeed_config(config, dp_size), mpu=MegatronMpu())
    if config.parallel.zero_stage == 3 and model.ttt.tie_word_embeddings:
        # The tied head reads the embedding's weight outside the embedding's forward: ZeRO-3 must
        # gather it there too.
        deepspeed.zero.register_external_parameter(model.output_layer, model.embedding.weight)
    return engine, optimizer
