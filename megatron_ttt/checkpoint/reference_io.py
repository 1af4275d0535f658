"""Reading and writing the reference's checkpoint directory: `config.json` (model_type "ttt")
and the weights (`model.safetensors`, `pytorch_model.bin`, or their sharded index forms)."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from megatron_ttt.models.parameters import ReferenceFormatError
from megatron_ttt.models.config import TTTModelConfig

# Our field <- the reference's config key. document_boundaries is ours: the reference's code reads
# its config without it and runs as "carry"; written, it brings a "reset" model back as one.
_SAME_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "rms_norm_eps", "tie_word_embeddings", "rope_theta",
              "ttt_base_lr", "mini_batch_size", "conv_kernel", "bos_token_id", "eos_token_id", "document_boundaries")


def config_from_reference(ref: dict, source: str) -> TTTModelConfig:
    """Our model config from the reference's. Its scan_checkpoint_group_size is how the reference
    ran (time-axis checkpointing), not what the model is: ours is chosen per run."""
    if ref.get("model_type") != "ttt":
        raise ReferenceFormatError(f"{source}: model_type is {ref.get('model_type')!r}, expected 'ttt'")
    if ref.get("ttt_layer_type", "linear") not in ("linear", "mlp"):
        raise ReferenceFormatError(f"{source}: ttt_layer_type {ref['ttt_layer_type']!r} is not supported "
                                   "(linear or mlp)")
    switches = {k: bool(ref.get(k, False)) for k in ("use_gate", "share_qk", "pre_conv")}
    if len(set(switches.values())) != 1:
        raise ReferenceFormatError(f"{source}: use_gate/share_qk/pre_conv = {switches}; only the two backbones are "
                                   "supported (all three true: Mamba, all false: Transformer)")
    if ref.get("hidden_act", "silu") != "silu" or ref.get("pretraining_tp", 1) != 1:
        raise ReferenceFormatError(f"{source}: hidden_act {ref.get('hidden_act')!r} / pretraining_tp "
                                   f"{ref.get('pretraining_tp')} are not supported (silu, 1)")
    fields = {k: ref[k] for k in _SAME_KEYS if k in ref}
    try:
        return TTTModelConfig(**fields, num_layers=ref["num_hidden_layers"], num_heads=ref["num_attention_heads"],
                              layer_type=ref.get("ttt_layer_type", "linear"),
                              backbone="mamba" if switches["use_gate"] else "transformer",
                              init_std=ref.get("initializer_range", 0.02))
    except KeyError as exc:
        raise ReferenceFormatError(f"{source}: missing config key {exc}") from None
    except ValueError as exc:
        raise ReferenceFormatError(f"{source}: {exc}") from None


def check_reference_model(cfg: TTTModelConfig, source: str) -> None:
    """The reference model (TTTForCausalLM) has only TTT-Linear and TTT-MLP layers: a hybrid or a
    LaCT model cannot be written."""
    if cfg.layer_type == "lact":
        raise ReferenceFormatError(f"{source}: the reference format has no LaCT layers (layer_type lact); nothing was "
                                   "written (mttt-to-mttt converts LaCT models)")
    attention = [i for i, kind in enumerate(cfg.mixers) if kind != "ttt"]
    if attention:
        raise ReferenceFormatError(f"{source}: the reference format has no attention layers, and this model's "
                                   f"layer_pattern {cfg.layer_pattern!r} has attention at layers {attention}; nothing "
                                   f"was written (mttt-to-mttt converts hybrids)")


def config_to_reference(cfg: TTTModelConfig) -> dict:
    check_reference_model(cfg, "the model config")
    return {"model_type": "ttt", "architectures": ["TTTForCausalLM"], **{k: getattr(cfg, k) for k in _SAME_KEYS},
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "ttt_layer_type": cfg.layer_type, "use_gate": cfg.use_gate, "share_qk": cfg.share_qk,
            "pre_conv": cfg.pre_conv, "hidden_act": "silu", "initializer_range": cfg.init_std,
            "scan_checkpoint_group_size": 0, "pretraining_tp": 1, "use_cache": False,
            "torch_dtype": "float32"}


def _weight_files(src: Path) -> list[Path]:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (src / index_name).exists():
            index = json.loads((src / index_name).read_text())
            return [src / f for f in sorted(set(index["weight_map"].values()))]
        if (src / single).exists():
            return [src / single]
    raise ReferenceFormatError(f"{src} holds no model.safetensors or pytorch_model.bin (nor a sharded index)")


def read_reference(src: Path) -> tuple[TTTModelConfig, dict[str, torch.Tensor]]:
    """The config and every tensor of a reference checkpoint directory."""
    config_path = src / "config.json"
    if not config_path.exists():
        raise ReferenceFormatError(f"{src} has no config.json; is it a reference (TTTForCausalLM) checkpoint?")
    cfg = config_from_reference(json.loads(config_path.read_text()), str(config_path))
    tensors: dict[str, torch.Tensor] = {}
    for path in _weight_files(src):
        part = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                               weights_only=True)
        tensors |= part
    return cfg, tensors


def write_reference(dst: Path, cfg: TTTModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """config.json and model.safetensors, as the reference's save_pretrained writes them (no
    lm_head with tied embeddings)."""
    dst.mkdir(parents=True)
    (dst / "config.json").write_text(json.dumps(config_to_reference(cfg), indent=2) + "\n")
    save_file({n: t.contiguous() for n, t in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})
