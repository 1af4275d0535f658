"""A Hugging Face Llama directory (config.json, safetensors weights, sharded or not, and a
sentencepiece tokenizer.model) read without running any of its code, and mapped onto our
parameter table: every layer attention (the Llama model itself), or a hybrid by a layer pattern.

Llama's tensors take our reference-format names (models/parameter_table.py names the attention
layers as Llama does): the layer norms are renamed (input_layernorm -> seq_norm,
post_attention_layernorm -> ffn_norm) and q_proj, k_proj's rows permuted within each head, since
Hugging Face's RoPE turns the pairs (i, i + d/2) (rotate-half) where ours turns (2i, 2i + 1).
A TTT layer of a hybrid takes the attention's o_proj as its out-projection and q, k, v as its
in-projection's, each of its H heads reading Llama's key/value head h // (H / kv_heads) (the
head grouped-query attention gives query head h, repeated); the rest of it (inner model, inner
learning rate, norms, token offsets) is drawn as for a fresh model (models/build.py).
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from megatron_ttt.checkpoint.run_dir import TOKENIZER_FILE
from megatron_ttt.data.tokenizer import Tokenizer
from megatron_ttt.errors import UserInputError
from megatron_ttt.models.build import reference_init
from megatron_ttt.models.config import TTTModelConfig, pattern_problems
from megatron_ttt.models.parameter_table import reference_shapes, rules
from megatron_ttt.models.parameters import check_tensors
from megatron_ttt.models.presets import BASE_LR

LLAMA_NORMS = {"input_layernorm.weight": "seq_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight"}
"""Llama's layer norms -> ours."""
BUFFERS = ("rotary_emb.inv_freq",)
"""Tensors some Llama checkpoints carry that are no weights (recomputed from rope_theta)."""
INDEX = "model.safetensors.index.json"


class LlamaFormatError(UserInputError):
    """A Llama directory we cannot read or represent: the message names the file and key."""


@dataclass(frozen=True)
class HybridLayout:
    """What the converted model makes of Llama's layers."""

    layer_pattern: str = ""
    """A symbol per layer (T TTT, * attention, W sliding-window attention); empty: every layer *."""
    attention_window: int = 0
    """The W layers' window; 0: the model config's default."""
    layer_type: str = "linear"
    """The T layers' inner model."""
    seed: int = 0
    """Draws what Llama has no weights for (the T layers' inner model, lr and norms)."""


def _rope_problems(raw: dict) -> list[str]:
    """Hugging Face writes rope settings as rope_scaling (before 5.0) or rope_parameters: only
    plain RoPE ('default', no scaling) is ours."""
    problems = []
    scaling = raw.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) != "default":
        problems.append(f"rope_scaling {scaling} is a scaled RoPE we cannot represent (only plain RoPE)")
    kind = (raw.get("rope_parameters") or {}).get("rope_type", "default")
    if kind != "default":
        problems.append(f"rope_parameters.rope_type {kind!r} is a scaled RoPE we cannot represent (only 'default')")
    return problems


def _representable_problems(raw: dict) -> list[str]:
    """Each Llama setting our model cannot reproduce exactly, by its key."""
    if raw.get("model_type") != "llama":
        return [f"model_type {raw.get('model_type')!r} is not 'llama' (only Llama-architecture models convert)"]
    problems = _rope_problems(raw)
    problems += [f"{key} true: our projections have no biases" for key in ("attention_bias", "mlp_bias")
                 if raw.get(key)]
    if raw.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {raw['hidden_act']!r} is not 'silu' (our MLP is SwiGLU)")
    head_dim = raw.get("head_dim")
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    if head_dim is not None and hidden and heads and head_dim * heads != hidden:
        problems.append(f"head_dim {head_dim} is not hidden_size / num_attention_heads = {hidden} / {heads} "
                        f"(ours is)")
    return problems


def _token_id(value, default: int) -> int:
    """A special token's id: Llama-3 configs list several EOS ids; the first ends our documents."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def llama_model_config(raw: dict, source: str) -> TTTModelConfig:
    """The Llama model of config.json `raw` as ours (every layer attention), or a LlamaFormatError
    naming each key we cannot represent."""
    if problems := _representable_problems(raw):
        raise LlamaFormatError(f"{source}: " + "; ".join(problems) + "; nothing was written")
    try:
        heads = raw["num_attention_heads"]
        kv_heads = raw.get("num_key_value_heads") or heads
        rope_theta = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta", 10000.0))
        return TTTModelConfig(
            vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"], num_heads=heads, num_kv_heads=0 if kv_heads == heads else kv_heads,
            backbone="transformer", layer_pattern="*" * raw["num_hidden_layers"], rope_theta=float(rope_theta),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6), tie_word_embeddings=raw.get("tie_word_embeddings", False),
            init_std=raw.get("initializer_range", 0.02), bos_token_id=_token_id(raw.get("bos_token_id"), 1),
            eos_token_id=_token_id(raw.get("eos_token_id"), 2))
    except KeyError as exc:
        raise LlamaFormatError(f"{source}: missing config key {exc}; nothing was written") from None
    except ValueError as exc:
        raise LlamaFormatError(f"{source}: {exc}; nothing was written") from None


def read_llama_config(src: Path) -> TTTModelConfig:
    path = src / "config.json"
    if not path.is_file():
        raise LlamaFormatError(f"{src} has no config.json; is it a Hugging Face model directory?")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LlamaFormatError(f"{path} is not valid JSON: {exc}") from None
    return llama_model_config(raw, str(path))


def hybrid_config(llama: TTTModelConfig, layout: HybridLayout) -> TTTModelConfig:
    """The converted model's config: Llama's with the layout's pattern, window and layer type
    (problems named by the command-line options that set them)."""
    pattern = layout.layer_pattern or llama.layer_pattern
    window = layout.attention_window or llama.attention_window
    flags = {"layer_pattern": "--layer-pattern", "attention_window": "--attention-window"}
    if problems := pattern_problems(pattern, llama.num_layers, window, llama.num_kv_heads, llama.num_heads,
                                    key=lambda field: flags.get(field, field)):
        raise LlamaFormatError("; ".join(problems) + "; nothing was written")
    return replace(llama, layer_pattern=pattern, attention_window=window, layer_type=layout.layer_type,
                   ttt_base_lr=BASE_LR[layout.layer_type])


def _weight_files(src: Path) -> list[Path]:
    if (src / INDEX).is_file():
        files = sorted(set(json.loads((src / INDEX).read_text())["weight_map"].values()))
        if missing := [f for f in files if not (src / f).is_file()]:
            raise LlamaFormatError(f"{src / INDEX} names shards that are not there: {', '.join(missing)}; download "
                                   f"the whole directory")
        return [src / f for f in files]
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    raise LlamaFormatError(f"{src} holds neither model.safetensors nor {INDEX} (only safetensors are read: a "
                           f"pytorch_model.bin is a pickle, which can run code; re-save it with save_pretrained)")


def read_llama_weights(src: Path) -> dict[str, torch.Tensor]:
    """Every weight of the directory, in float32 (bf16 and fp16 convert exactly), less the buffers."""
    tensors = {}
    for path in _weight_files(src):
        try:
            part = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise LlamaFormatError(f"{path} is not a readable safetensors file: {exc}") from None
        tensors |= {n: t.float() for n, t in part.items() if not n.endswith(BUFFERS)}
    return tensors


def _llama_name(ours: str) -> str:
    for theirs, mine in LLAMA_NORMS.items():
        if ours.endswith(mine):
            return ours.removesuffix(mine) + theirs
    return ours


def rotate_half_to_pairs(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """q or k's projection [heads * d, D] with rows in Hugging Face's rotate-half order (pair i:
    rows i, i + d/2 of each head) -> ours (pair i: rows 2i, 2i + 1); attention scores are
    unchanged since q and k are permuted alike."""
    rows, width = weight.shape
    return weight.reshape(rows // head_dim, 2, head_dim // 2, width).transpose(1, 2).reshape(rows, width)


def llama_reference_tensors(llama: dict[str, torch.Tensor], cfg: TTTModelConfig,
                            source: str) -> dict[str, torch.Tensor]:
    """Llama's tensors (checked against `cfg`, every layer attention) under our reference-format
    names, q and k in our RoPE order."""
    shapes = reference_shapes(cfg)
    theirs = {ours: _llama_name(ours) for ours in shapes}
    check_tensors(llama, {theirs[n]: shape for n, shape in shapes.items()}, source,
                  {"lm_head.weight"} if cfg.tie_word_embeddings else set())
    qk = ("self_attn.q_proj.weight", "self_attn.k_proj.weight")
    return {ours: rotate_half_to_pairs(llama[name], cfg.head_dim) if name.endswith(qk) else llama[name]
            for ours, name in theirs.items()}


def _ttt_from_attention(attention: dict[str, torch.Tensor], cfg: TTTModelConfig, layer: int) -> dict[str, torch.Tensor]:
    """A TTT layer's q, k, v, o projections from the attention layer it replaces: key/value heads
    repeated to one per query head."""
    a, t = f"model.layers.{layer}.self_attn.", f"model.layers.{layer}.seq_modeling_block."
    group, d = cfg.num_heads // cfg.kv_heads, cfg.head_dim

    def per_head(w: torch.Tensor) -> torch.Tensor:
        return w.reshape(cfg.kv_heads, d, -1).repeat_interleave(group, dim=0).reshape(cfg.num_heads * d, -1)

    return {t + "q_proj.weight": attention[a + "q_proj.weight"], t + "o_proj.weight": attention[a + "o_proj.weight"],
            **{t + f"{n}_proj.weight": per_head(attention[a + f"{n}_proj.weight"]) for n in "kv"}}


def hybrid_tensors(attention: dict[str, torch.Tensor], cfg: TTTModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Reference-format tensors of the model `cfg` from the all-attention ones: attention layers
    (* and W) keep theirs, T layers take theirs from the attention they replace, and whatever
    Llama has no counterpart for is drawn as models/build.py draws it."""
    taken = dict(attention)
    for layer, kind in enumerate(cfg.mixers):
        if kind == "ttt":
            taken |= _ttt_from_attention(attention, cfg, layer)
    return {name: taken[name] if name in taken else reference_init(rule, name, shape, cfg, seed)
            for rule in rules(cfg) for name, shape in zip(rule.refs, rule.shapes)}


def llama_tokenizer(src: Path, vocab_size: int) -> Path | None:
    """The directory's sentencepiece tokenizer (None where it has none), checked to load and to
    fit the model's vocabulary; a tokenizer.json alone (Llama-3 style) is refused."""
    path = src / TOKENIZER_FILE
    if not path.is_file():
        if (src / "tokenizer.json").is_file():
            raise LlamaFormatError(f"{src} has a tokenizer.json but no {TOKENIZER_FILE}: only sentencepiece "
                                   f"tokenizers (Llama 1/2 style) are supported; nothing was written (to convert "
                                   f"the weights alone, convert a copy of the directory without tokenizer.json and "
                                   f"give eval token ids)")
        return None
    pieces = Tokenizer(path).vocab_size
    if pieces > vocab_size:
        raise LlamaFormatError(f"{path} has {pieces} pieces, more than the model's vocab_size {vocab_size}; "
                               f"nothing was written")
    return path
