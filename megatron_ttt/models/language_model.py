"""The TTT language model: vocabulary-parallel embedding -> blocks (TTT, or in a hybrid TTT and
attention, by the layer pattern) -> RMSNorm -> tied head."""

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    VocabParallelEmbedding,
    gather_from_tensor_model_parallel_region,
    vocab_parallel_cross_entropy,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.utils import sharded_state_dict_default
from torch.utils.checkpoint import checkpoint

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.inference_cache import InferenceCache
from megatron_ttt.models.layers import RMSNorm, stat_dtype
from megatron_ttt.models.mixer import TTTMixer
from megatron_ttt.models.packing import Packing, packing
from megatron_ttt.models.spec import block_spec
from megatron_ttt.parallel.context import all_slices, context_group
from megatron_ttt.parallel.layout import ParallelLayout, layout_problems
from megatron_ttt.run_options import InnerLoopOptions


class TTTLanguageModel(MegatronModule):
    def __init__(self, config: TransformerConfig, ttt: TTTModelConfig, pg_collection: ProcessGroupCollection,
                 inner_loop: InnerLoopOptions = InnerLoopOptions()):
        super().__init__(config)
        self.ttt, self.pg_collection, self.tp_group = ttt, pg_collection, pg_collection.tp
        layout = ParallelLayout(config.tensor_model_parallel_size, config.sequence_parallel,
                                config.context_parallel_size)
        if problems := layout_problems(layout, ttt):
            raise ValueError("the model cannot be split so: " + "; ".join(problems))
        self.sequence_parallel = config.sequence_parallel
        self.block_checkpointing = False
        """Recompute each block in the backward (saves activations, costs one more forward)."""
        self.embedding = VocabParallelEmbedding(ttt.vocab_size, ttt.hidden_size, init_method=config.init_method,
                                                reduce_scatter_embeddings=self.sequence_parallel, config=config,
                                                tp_group=self.tp_group)
        self.blocks = torch.nn.ModuleList(build_module(block_spec(ttt, kind), config=config, ttt=ttt,
                                                       pg_collection=pg_collection, inner_loop=inner_loop,
                                                       layer_number=i + 1)
                                          for i, kind in enumerate(ttt.mixers))
        self.final_norm = RMSNorm(ttt.hidden_size, ttt.rms_norm_eps, config.params_dtype, self.sequence_parallel,
                                  self.tp_group)
        self.output_layer = ColumnParallelLinear(
            ttt.hidden_size, ttt.vocab_size, config=config, init_method=config.init_method, bias=False,
            gather_output=False, skip_bias_add=True, skip_weight_param_allocation=ttt.tie_word_embeddings,
            tp_group=self.tp_group)

    def set_inner_lr_scale(self, scale: float) -> None:
        """Multiply every TTT layer's inner base lr by `scale` (TTT-MLP's inner-lr warm-up)."""
        for block in self.blocks:
            if isinstance(block.mixer, TTTMixer):
                block.mixer.inner_lr_scale = scale

    def hidden_states(self, tokens: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """tokens [B, T] -> final hidden states [T(/tp), B, D]."""
        if cache is not None:
            return self._cached_hidden_states(tokens, cache)
        h = self.embedding(tokens)
        if not self.sequence_parallel:
            h = h.transpose(0, 1)
        documents = self._packing(tokens)
        for block in self.blocks:
            if self.block_checkpointing and self.training:
                h = checkpoint(block, h, None, documents, use_reentrant=False)
            else:
                h = block(h, None, documents)
        return self.final_norm(h)

    def _packing(self, tokens: torch.Tensor, cache: InferenceCache | None = None) -> Packing | None:
        """The documents of the whole sequence (gathered under context parallelism, where each rank
        holds a slice of the tokens), for a model that resets at them; None for one that carries."""
        if self.ttt.document_boundaries != "reset":
            return None
        whole = all_slices(tokens, 1, context_group(self.config, self.pg_collection))
        return packing(whole, self.ttt.eos_token_id, None if cache is None else cache.documents)

    def _cached_hidden_states(self, tokens: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        if self.sequence_parallel:
            raise ValueError("inference with a cache needs sequence_parallel off (one token cannot be split over TP)")
        if len(cache.blocks) != len(self.blocks):
            raise ValueError(f"the cache holds {len(cache.blocks)} layers, the model has {len(self.blocks)}")
        h = self.embedding(tokens).transpose(0, 1)
        documents = self._packing(tokens, cache)
        for block, block_cache in zip(self.blocks, cache.blocks):
            h = block(h, block_cache, documents)
        cache.position += tokens.shape[1]
        if documents is not None:
            cache.documents = documents.cursor(tokens, self.ttt.eos_token_id)
        return self.final_norm(h)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                cache: InferenceCache | None = None) -> torch.Tensor:
        """tokens [B, T] -> per-token loss [B, T] if labels are given, else this rank's vocabulary
        slice of the logits [B, T, V/tp] (`gather_logits` for all of them). With a cache
        (InferenceCache.empty for a new sequence) the tokens continue the cached sequence and the
        cache is updated in place, so a prompt then one token at a time equals one full forward."""
        weight = self.embedding.weight if self.ttt.tie_word_embeddings else None
        logits, _ = self.output_layer(self.hidden_states(tokens, cache), weight=weight)
        if labels is None:
            return logits.transpose(0, 1)
        return vocab_parallel_cross_entropy(logits.to(stat_dtype(logits)), labels.t().contiguous()).t()

    def last_logits(self, tokens: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """tokens [B, T] -> this rank's vocabulary slice of the last position's logits [B, V/tp]:
        the next token's, without computing (or holding) the logits of a long prompt's others."""
        if self.sequence_parallel or self.config.context_parallel_size > 1:
            raise ValueError("last_logits needs sequence_parallel off and context_parallel 1 (the last position "
                             "lives on one rank)")
        weight = self.embedding.weight if self.ttt.tie_word_embeddings else None
        logits, _ = self.output_layer(self.hidden_states(tokens, cache)[-1:], weight=weight)
        return logits[0]

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """For megatron-core dist_checkpointing: every tensor by its global shape (reshardable)."""
        sharded = {}
        for name, child in self.named_children():
            children = enumerate(child) if name == "blocks" else [(None, child)]
            for i, module in children:
                key = f"{prefix}{name}." if i is None else f"{prefix}{name}.{i}."
                sharded |= sharded_state_dict_default(module, key, sharded_offsets, metadata, self.tp_group)
        return sharded

    def gather_logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        """[B, T, V/tp] on every rank -> [B, T, V]."""
        if self.config.tensor_model_parallel_size == 1:
            return local_logits
        return gather_from_tensor_model_parallel_region(local_logits, group=self.tp_group)
