"""The model wrapped in a DeepSpeed engine: ZeRO over the data-parallel group, AdamW or Muon
(training/muon.py), clipping."""

import os
import sys
from pathlib import Path


from megatron_ttt.config import PretrainConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.parameter_table import rules
from megatron_ttt.parallel.deepspeed_mpu import MegatronMpu
from megatron_ttt.training.muon import Muon, MuonAdamW

# DeepSpeed JIT-compiles a CPU communication op on first use (~1 minute). Keeping the build with
# the environment compiles it once per environment, not once per machine user or CI run.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

def parameter_groups(model: TTTLanguageModel, weight_decay: float, muon: bool = False) -> list[dict]:
    """AdamW's groups: decayed as each parameter's rule in models/parameter_table.py says (matrices,
    embeddings, inner and conv weights), the rest (biases, norm gains, token offsets) at 0. With
    `muon`, the hidden matrices (decayed) form a first group of their own, `orthogonalised`."""
    params, table = dict(model.named_parameters()), rules(model.ttt)
    if set(params) != {rule.ours for rule in table}:
        raise ValueError(f"parameters without a rule, or rules without a parameter: "
                         f"{sorted(set(params) ^ {rule.ours for rule in table})}")
    matrices = {rule.ours for rule in table if muon and rule.hidden_matrix}
    decayed = {rule.ours for rule in table if rule.weight_decay} - matrices
    groups = [{"params": [p for n, p in params.items() if n in decayed], "weight_decay": weight_decay},
              {"params": [p for n, p in params.items() if n not in decayed | matrices], "weight_decay": 0.0}]
    if muon:
        groups.insert(0, {"params": [p for n, p in params.items() if n in matrices], "weight_decay": weight_decay,
                          "orthogonalised": True})
    return groups


def gradient_accumulation(config: PretrainConfig, dp_size: int) -> int:
    """Micro-batches per optimizer step (config.loading.check_world_size made it whole)."""
    data = config.data
    return data.global_batch_tokens // (data.micro_batch_size * dp_size * data.seq_len)


def deepspeed_config(config: PretrainConfig, dp_size: int) -> dict:
    opt, stage = config.optimizer, config.parallel.zero_stage
    muon = opt.name == "muon"
    out = {
        "train_micro_batch_size_per_gpu": config.data.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation(config, dp_size),
        # Muon clips before its momentum, in Muon.prepare: DeepSpeed would clip its updates instead.
        "gradient_clipping": 0.0 if muon else opt.grad_clip,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": config.train.dtype == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if muon:
        out["zero_allow_untested_optimizer"] = True  # MuonAdamW is elementwise: any ZeRO partition will do
    else:
        out["optimizer"] = {"type": "AdamW", "params": {"lr": opt.lr, "betas": [opt.beta1, opt.beta2], "eps": opt.eps,
                                                        "weight_decay": opt.weight_decay}}
    return out


def build_engine(model: TTTLanguageModel, config: PretrainConfig, dp_size: int):
    """The engine, its optimizer, and Muon's half of the step (None with AdamW)."""
    import deepspeed

    opt = config.optimizer
    muon = Muon(model, opt.muon_momentum, opt.grad_clip) if opt.name == "muon" else None
    groups = parameter_groups(model, opt.weight_decay, muon is not None)
    client = None if muon is None else MuonAdamW(groups, opt.lr, (opt.beta1, opt.beta2), opt.eps)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups if client is None else None, optimizer=client,
        config=deepspeed_config(config, dp_size), mpu=MegatronMpu(model.pg_collection))
    if config.parallel.zero_stage == 3 and model.ttt.tie_word_embeddings:
        # The tied head reads the embedding's weight outside the embedding's forward: ZeRO-3 must
        # gather it there too.
        deepspeed.zero.register_external_parameter(model.output_layer, model.embedding.weight)
    return engine, optimizer, muon
