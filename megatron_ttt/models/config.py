"""What the model is: the reference's hyper-parameters, named as our code uses them.

How it runs (inner-loop backend, time-axis checkpointing, parallel sizes) is not here: see
megatron_ttt.run_options. Plain Python, so configs and the planner load without torch.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

LAYER_TYPES = ("linear", "mlp", "lact")
BACKBONES = ("transformer", "mamba")
DOCUMENT_BOUNDARIES = ("reset", "carry")
MIXER_SYMBOLS = {"T": "ttt", "*": "attention", "W": "window"}
"""A layer_pattern's symbols: a TTT layer (of layer_type), full causal attention (megatron-core's
hybrid symbol for attention), sliding-window causal attention."""
RUN_OPTIONS_SAVED_BY_OLDER_BUILDS = ("checkpoint_group", "inner_loop_backend")


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
    """"linear": inner model z W + b; "mlp": two layers of width 4 * head_dim with tanh-GELU;
    "lact": LaCT's layer (Zhang et al. 2025), SwiGLU fast weights updated once per large chunk
    beside sliding-window attention over num_heads heads and attention_window positions, which
    share its q, k, v (docs/model.md)."""
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
    bos_token_id: int = 1
    eos_token_id: int = 2
    """The tokenizer's EOS, which ends each packed document."""
    layer_pattern: str = ""
    """One symbol per layer, its mixer: T TTT, * full causal attention, W sliding-window attention
    (every layer keeps its MLP). Empty: every layer TTT."""
    attention_window: int = 4096
    """Positions a W layer's query attends to: its own and the attention_window - 1 before it."""
    num_kv_heads: int = 0
    """Key/value heads of the attention layers (grouped-query attention); 0: num_heads."""
    lact_heads: int = 4
    """LaCT layers: fast-weight heads (LaCT's num_lact_heads), each of width hidden_size / lact_heads."""
    lact_chunk_size: int = 2048
    """LaCT layers: tokens per fast-weight update; a chunk's queries read the weights from before it."""
    lact_inter_multi: int = 1
    """LaCT layers: the fast SwiGLU's hidden width as a multiple of the fast-weight head width."""
    lact_fw_rank: int = 32
    """LaCT layers: rank of the learnable initial w0 and w2 (left @ right + 0.5 I, LaCT's
    w0_w2_low_rank); 0: full-rank matrices."""
    lact_fw_init_gain: float = 0.5
    """LaCT layers: scale of the initial fast weights' low-rank factors at initialisation."""
    lact_momentum: bool = True
    """LaCT layers: the fast-weight update goes through momentum, a per-token coefficient averaged
    over the chunk."""
    lact_muon: bool = False
    """LaCT layers: the fast-weight update is orthogonalised by Newton-Schulz (Muon) before it is applied."""
    document_boundaries: str = "carry"
    """"reset": every layer starts each document afresh after an EOS (models/packing.py);
    "carry": one sequence, as the reference trains (and every model saved before this key)."""

    def __post_init__(self):
        problems = []
        if self.layer_type not in LAYER_TYPES:
            problems.append(f"layer_type {self.layer_type!r} is not one of {LAYER_TYPES}")
        if self.document_boundaries not in DOCUMENT_BOUNDARIES:
            problems.append(f"document_boundaries {self.document_boundaries!r} is not one of {DOCUMENT_BOUNDARIES}")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone {self.backbone!r} is not one of {BACKBONES}")
        problems += shape_problems(self.hidden_size, self.num_heads)
        if self.layer_type == "lact":
            problems += lact_problems(self.hidden_size, self.num_heads, self.lact_heads, self.lact_chunk_size,
                                      self.backbone)
        problems += pattern_problems(self.layer_pattern, self.num_layers, self.attention_window, self.num_kv_heads,
                                     self.num_heads)
        if problems:
            raise ValueError("TTTModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mixers(self) -> tuple[str, ...]:
        """Each layer's mixer: "ttt", "attention" or "window"."""
        return tuple(MIXER_SYMBOLS[c] for c in self.layer_pattern) or ("ttt",) * self.num_layers

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

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
        return inner_widths(self.head_dim, self.layer_type)

    @property
    def lact_head_dim(self) -> int:
        """LaCT layers: a fast-weight head's width (its fast SwiGLU's input and output)."""
        return self.hidden_size // self.lact_heads

    @property
    def lact_hidden(self) -> int:
        """LaCT layers: a fast-weight head's SwiGLU hidden width."""
        return self.lact_head_dim * self.lact_inter_multi

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "TTTModelConfig":
        """The config saved as `values` in `source`. Run options that older builds saved with the
        model are ignored; any other unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - set(RUN_OPTIONS_SAVED_BY_OLDER_BUILDS))
        if unknown:
            raise ValueError(f"{source}: unknown model config keys {unknown} (known: {', '.join(sorted(known))})")
        return cls(**{k: v for k, v in values.items() if k in known})


def inner_widths(head_dim: int, layer_type: str) -> tuple[int, ...]:
    """Layer widths of a head's inner model: (d, d) for linear, (d, 4d, d) for mlp."""
    return (head_dim, head_dim) if layer_type == "linear" else (head_dim, 4 * head_dim, head_dim)


def shape_problems(hidden_size: int, num_heads: int, key: Callable[[str], str] = str) -> list[str]:
    """What is wrong with a width and head count, each field named by `key(field)`."""
    if num_heads < 1 or hidden_size < 1:
        return [f"{key(name)} {value} must be at least 1" for name, value in
                (("hidden_size", hidden_size), ("num_heads", num_heads)) if value < 1]
    if hidden_size % num_heads:
        return [f"{key('hidden_size')} {hidden_size} is not divisible by {key('num_heads')} {num_heads}"]
    if (hidden_size // num_heads) % 2:
        return [f"the head dim {key('hidden_size')} / {key('num_heads')} = {hidden_size // num_heads} must be even "
                "for RoPE"]
    return []


def lact_problems(hidden_size: int, num_heads: int, lact_heads: int, lact_chunk_size: int, backbone: str,
                  key: Callable[[str], str] = str) -> list[str]:
    """What is wrong with a LaCT layer's settings, each field named by `key(field)`. A fast-weight
    head's columns carry whole attention heads, so that TP and CP split both kinds of head alike."""
    problems = []
    if lact_heads < 1 or hidden_size % lact_heads or num_heads % lact_heads:
        problems.append(f"{key('lact_heads')} {lact_heads} must divide {key('hidden_size')} {hidden_size} and "
                        f"{key('num_heads')} {num_heads}")
    if lact_chunk_size < 1:
        problems.append(f"{key('lact_chunk_size')} {lact_chunk_size} must be at least 1")
    if backbone != "transformer":
        problems.append(f"{key('layer_type')} lact is LaCT's transformer layer (no convolutions, no gate): "
                        f"{key('backbone')} must be transformer, not {backbone!r}")
    return problems


def pattern_problems(layer_pattern: str, num_layers: int, attention_window: int, num_kv_heads: int, num_heads: int,
                     key: Callable[[str], str] = str) -> list[str]:
    """What is wrong with a hybrid layer pattern and its attention settings, each field named by
    `key(field)` (e.g. "model.layer_pattern" in a pretraining config, "--layer-pattern" on the
    command line)."""
    problems = []
    unknown = sorted(set(layer_pattern) - set(MIXER_SYMBOLS))
    if unknown:
        problems.append(f"{key('layer_pattern')} {layer_pattern!r} has unknown symbols {unknown} (use T: TTT, "
                        f"*: full attention, W: sliding-window attention)")
    if layer_pattern and len(layer_pattern) != num_layers:
        problems.append(f"{key('layer_pattern')} {layer_pattern!r} has {len(layer_pattern)} symbols for "
                        f"{num_layers} layers")
    if attention_window < 1:
        problems.append(f"{key('attention_window')} {attention_window} must be at least 1")
    if num_kv_heads < 0 or (num_kv_heads and num_heads % num_kv_heads):
        problems.append(f"{key('num_kv_heads')} {num_kv_heads} must divide {key('num_heads')} {num_heads} "
                        "(0: as many as heads)")
    return problems
