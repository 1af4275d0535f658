"""The sections of a pretraining config. Each field's docstring is its documentation
(docs/training.md is generated from them)."""

from dataclasses import dataclass, field

from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.run_options import InnerLoopOptions


@dataclass
class ModelSection:
    preset: str = "tiny"
    """Model size: tiny, 125m, 350m, 760m, 1.3b or 7b; or a hybrid: 125m-hybrid or 7b-hybrid (TTT and
    sliding-window attention layers alternating, docs/model.md); or LaCT's: 125m-lact or 760m-lact
    (with model.layer_type=lact)."""
    layer_type: str = "linear"
    """Inner model: linear (TTT-Linear), mlp (TTT-MLP) or lact (LaCT's large-chunk SwiGLU fast
    weights beside sliding-window attention in one layer, docs/model.md)."""
    backbone: str = ""
    """mamba (gate, shared q/k convs, pre-conv) or transformer; empty: the layer type's (mamba;
    transformer for lact, the only one it has)."""
    num_layers: int = 0
    """Layers (0: the preset's); a hybrid preset's layer pattern repeats to this depth."""
    hidden_size: int = 0
    """Model width D (0: the preset's); a multiple of num_heads with an even head dim D / heads.
    The fused Triton kernels take head dims that are powers of two >= 16: others run the PyTorch
    dual form (noted at the start)."""
    num_heads: int = 0
    """Heads of every mixer (0: the preset's); TP x CP must divide them."""
    ffn_hidden_size: int = 0
    """Width of each layer's SwiGLU MLP (0: the preset's); TP must divide it."""
    mini_batch_size: int = 16
    """Tokens per inner-loop gradient step."""
    layer_pattern: str = ""
    """Each layer's mixer, one symbol per layer: T TTT, * full causal attention, W sliding-window
    attention (e.g. TWTW); empty: the preset's (every layer TTT but in the hybrid presets)."""
    attention_window: int = 0
    """Positions a sliding-window (W) layer's query attends to, its own included; 0: the preset's
    (4096 but in the hybrid presets)."""
    num_kv_heads: int = 0
    """Key/value heads of the attention layers (grouped-query attention); 0: the preset's (as many
    as query heads but in the hybrid presets)."""
    document_boundaries: str = "reset"
    """reset: every layer starts each packed document afresh after the tokenizer's EOS (TTT state,
    inner mini-batches, convolutions, attention; docs/model.md); carry: state flows across
    documents, as the reference trains (runs saved before this setting are carry)."""
    lact_heads: int = 4
    """LaCT layers: fast-weight heads, each hidden_size / lact_heads wide; it divides hidden_size and
    num_heads (the attention heads of a fast head's columns), TP x CP divides it."""
    lact_chunk_size: int = 0
    """LaCT layers: tokens per fast-weight update (0: the preset's, 2048; 64 for tiny). A chunk
    as long as data.seq_len never updates the fast weights in training."""
    lact_momentum: bool = True
    """LaCT layers: the fast-weight update goes through momentum (per-token coefficients averaged
    over the chunk)."""
    lact_muon: bool = False
    """LaCT layers: the fast-weight update is orthogonalised by Newton-Schulz (Muon)."""
    rope_theta: float = 0.0
    """RoPE's base (0: the preset's, 10000; 1e6 for 760m-lact). TTT layers rotate positions within
    an inner mini-batch, so a longer context changes nothing there; attention and LaCT layers rotate
    absolute positions: a context-extension stage may raise it (the one model key that may differ from train.init_from's model)."""
    rms_norm_eps: float = 0.0
    """Epsilon of every RMSNorm (0: the preset's, 1e-6); a converted Llama keeps its own (1e-5 for
    Llama 2)."""
    tie_word_embeddings: bool | None = None
    """true: the output head is the embedding matrix; false: a head of its own, as most released
    Llama models have (null: the preset's, tied)."""


@dataclass
class ParallelSection:
    tensor_parallel: int = 1
    """Ranks splitting each layer's heads; the world size over tensor_parallel x context_parallel is
    data parallel."""
    sequence_parallel: bool = False
    """Split the sequence over TP ranks outside the mixers and MLPs (tensor_parallel > 1)."""
    context_parallel: int = 1
    """Ranks splitting each sample's sequence (seq_len / context_parallel tokens each); inside
    every mixer an all-to-all gives each rank whole sequences of heads / (TP x CP) heads."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage over the data-parallel group: 0, 1, 2 or 3."""
    block_checkpointing: bool = False
    """Recompute each block's activations in the backward (torch activation checkpointing)."""
    time_checkpoint_group: int = 0
    """Time-axis checkpointing inside the TTT inner loop: keep its state every G mini-batches and
    recompute inside them in the backward (0: off); bitwise neutral, may change on resume."""


SCHEDULES = ("cosine", "linear", "constant", "wsd")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


@dataclass
class OptimizerSection:
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 1e-5
    """The learning rate the decay ends at, on the last step."""
    warmup_fraction: float = 0.1
    """Fraction of the steps spent warming up linearly from 0 (0: the first step at lr)."""
    schedule: str = "cosine"
    """After the warm-up: cosine or linear decay to min_lr, constant at lr, or wsd (warmup-stable-
    decay: lr until the last decay_fraction of the steps, then decay_shape down to min_lr)."""
    decay_fraction: float = 0.2
    """wsd: fraction of the steps in the final decay (1 with warmup_fraction 0: a run that is all
    decay, such as a decay branch from a stable-phase checkpoint)."""
    decay_shape: str = "1-sqrt"
    """wsd: the decay's shape over its progress p from 0 to 1, as a fraction of lr - min_lr: linear
    (1 - p), cosine ((1 + cos(pi p)) / 2) or 1-sqrt (1 - sqrt(p), the cooldown Hagele et al. 2024,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", found best)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (not on biases, norms and token offsets)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    eps: float = 1e-8
    """AdamW denominator epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (TP-correct: split tensors counted once)."""
    inner_lr_warmup_from: float = 0.01
    """TTT-MLP only: the inner base lr rises from this to its configured value over the warm-up."""
    name: str = "adamw"
    """adamw, or muon: the hidden weight matrices (the mixers' in/out projections and the MLP's,
    as models/parameter_table.py marks them) step by Newton-Schulz orthogonalised Nesterov
    momentum, everything else (embeddings, head, norms, biases, convolutions, TTT's per-head
    vectors and inner initial weights) by AdamW with the settings above (docs/training.md, Muon)."""
    muon_momentum: float = 0.95
    """Muon's momentum (Nesterov). Its update is scaled by 0.2 * sqrt(max(rows, cols)) of the
    whole (unsplit) matrix, which gives it about AdamW's update RMS: `lr`, its schedule and
    `weight_decay` (decoupled, as AdamW's) serve both."""


@dataclass
class DataSection:
    manifest: str = "bundled"
    """A manifest from `mttt data shard`, or "bundled": the bundled corpus, tokenized and sharded
    on first use into the cache directory."""
    blend: str = ""
    """Train on several manifests mixed by weight instead of `manifest`, as Megatron-LM's
    --data-path: "W1 MANIFEST1 W2 MANIFEST2 ..." (weights are normalized; docs/data.md); in a YAML
    file also a list of {manifest: PATH, weight: W}. Validation scores each manifest's val split
    on its own; the reported val_loss is their weighted mean."""
    seq_len: int = 256
    """Tokens per sample (must equal the manifest's seq-len)."""
    micro_batch_size: int = 4
    """Samples per rank per forward/backward."""
    global_batch_tokens: int = 8192
    """Tokens per optimizer step over all ranks; sets the gradient accumulation."""
    num_workers: int = 1
    """DataLoader workers per rank."""
    verify: str = "size"
    """What is checked of every shard before training starts: size (a stat each: missing and
    truncated shards) or full (also each shard's sha256, reading all the data once per node;
    docs/data.md)."""
    seed: int = 1234
    """Shuffles the samples, differently each epoch."""
    bundled_vocab_size: int = 2048
    """Vocabulary of the tokenizer trained for the bundled corpus."""
    mask_eod_loss: bool = False
    """Leave out of the loss the prediction made at each EOS (the next document's first token,
    which nothing before it can tell), as Megatron-LM's --eod-mask-loss."""


@dataclass
class CheckpointSection:
    interval: int = 50
    """Save every N steps (and at the end, and on SIGTERM/SIGUSR1)."""
    keep: int = 2
    """Keep the newest K checkpoints."""


@dataclass
class LoggingSection:
    interval: int = 10
    """Print a line every N steps."""
    eval_interval: int = 50
    """Validation loss every N steps and at the last step (0: never)."""
    eval_batches: int = 8
    """Micro-batches of the held-out split per validation."""
    tensorboard: bool = True
    """Write tensorboard event files under the run directory."""


@dataclass
class TrainSection:
    steps: int = 200
    """Optimizer steps."""
    seed: int = 1234
    """Seeds parameter initialization."""
    dtype: str = "fp32"
    """fp32 or bf16 (mixed precision, fp32 master weights)."""
    inner_loop_backend: str = "auto"
    """TTT inner loop: auto (the fused Triton kernels on GPUs, the PyTorch dual form on CPUs), triton, torch,
    compile (the dual form with its mini-batch step through torch.compile: compiled once at the
    start, seconds to a minute, then faster), or manual (the dual form with TTT-Linear's backward
    written out: fewer ops and about half the saved bytes, no compile; TTT-MLP as torch)."""
    compile: bool = False
    """torch.compile each block (one graph per kind of block, compiled in the first step and printed
    with its time; the inner loop stays one op that runs as inner_loop_backend says, its backward
    running its forward again). Off by default: see docs/benchmarks.md for where it pays."""
    compile_backend: str = "inductor"
    """torch.compile's backend for train.compile: inductor generates fused code; aot_eager traces
    the same forward and backward graphs without generating code (quick, for checks)."""
    init_from: str = ""
    """Start this run (step 0, its own schedule and data) from the weights of a run directory (its
    newest intact checkpoint), a training checkpoint or a model directory (`mttt convert`); the
    model section must describe the same model (model.rope_theta may differ). Read only until the
    run has a checkpoint of its own: --resume auto then continues that (docs/training.md)."""
    init_optimizer: bool = False
    """With init_from a training checkpoint: also take AdamW's moments and step count from it
    (false: a fresh optimizer state)."""


@dataclass
class PretrainConfig:
    run_dir: str = "runs/default"
    """Where checkpoints, logs, the loss plot and the resolved config go."""
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    data: DataSection = field(default_factory=DataSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    train: TrainSection = field(default_factory=TrainSection)

    def inner_loop(self) -> InnerLoopOptions:
        """How the model's TTT layers run (handed to the model, never saved with it)."""
        return InnerLoopOptions(self.train.inner_loop_backend, self.parallel.time_checkpoint_group)

    def layout(self, processes: int = 0) -> ParallelLayout:
        """The parallel layout this config asks of `processes` ranks (0: not known yet)."""
        p = self.parallel
        return ParallelLayout(p.tensor_parallel, p.sequence_parallel, p.context_parallel, p.zero_stage, processes)
