"""The model wrapped in a DeepSpeed engine: ZeRO over the data-parallel group, AdamW, clipping."""

import os
import sys
from pathlib import Path


from megatron_ttt.config import PretrainConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameter_table import rules
from megatron_ttt.parallel.deepspeed_mpu import MegatronMpu

# DeepSpeed JIT-compiles a CPU communication op on first use (~1 minute). Keeping the build with
# the environment compiles it once per environment, not once per machine user or CI run.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

def parameter_groups(model: TTTLanguageModel, weight_decay: float) -> list[dict]:
    """AdamW's groups: decayed as each parameter's rule in models/parameters.py says (matrices,
    embeddings, inner and conv weights), the rest (biases, norm gains, token offsets) at 0."""
    params, table = dict(model.named_parameters()), rules(model.ttt)
    if set(params) != {rule.ours for rule in table}:
        raise ValueError(f"parameters without a rule, or rules without a parameter: "
                         f"{sorted(set(params) ^ {rule.ours for rule in table})}")
    decayed = {rule.ours for rule in table if rule.weight_decay}
    return [{"params": [p for n, p in params.items() if n in decayed], "weight_decay": weight_decay},
            {"params": [p for n, p in params.items() if n not in decayed], "weight_decay": 0.0}]


def gradient_accumulation(config: PretrainConfig, dp_size: int) -> int:
    """Micro-batches per optimizer step (config.loading.check_world_size made it whole)."""
    data = config.data
    return data.global_batch_tokens // (data.micro_batch_size * dp_size * data.seq_len)


def deepspeed_config(config: PretrainConfig, dp_size: int) -> dict:
    opt, stage = config.optimizer, config.parallel.zero_stage
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
        config=deepspeed_config(config, dp_size), mpu=MegatronMpu(model.pg_collection))
    if config.parallel.zero_stage == 3 and model.ttt.tie_word_embeddings:
        # The tied head reads the embedding's weight outside the embedding's forward: ZeRO-3 must
        # gather it there too.
        deepspeed.zero.register_external_parameter(model.output_layer, model.embedding.weight)
    return engine, optimizer
