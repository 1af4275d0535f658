"""A Llama model as a plain function of its Hugging Face tensors: the twin that `mttt convert
llama-to-mttt` checks the converted model against.

Dense, batch-first, written from the Llama specification as Hugging Face stores it, in its own
formulations where ours differ: RoPE by rotate-half on q and k as the checkpoint lays them out
(ours turns interleaved pairs, so conversion permutes q and k's rows), key/value heads repeated
for grouped-query attention, an explicit causal softmax, torch's RMSNorm.
"""

import math

import torch
import torch.nn.functional as F

from megatron_ttt.models.config import TTTModelConfig


def _rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _attention(w: dict[str, torch.Tensor], p: str, x: torch.Tensor, cfg: TTTModelConfig) -> torch.Tensor:
    B, T, _ = x.shape
    H, Hkv, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    q = (x @ w[p + "q_proj.weight"].T).reshape(B, T, H, d).transpose(1, 2)
    k, v = ((x @ w[p + f"{n}_proj.weight"].T).reshape(B, T, Hkv, d).transpose(1, 2) for n in "kv")
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d))
    freqs = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    q, k = _rotate_half(q, cos, sin), _rotate_half(k, cos, sin)
    k, v = (t.repeat_interleave(H // Hkv, dim=1) for t in (k, v))  # query head h reads kv head h // (H / Hkv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    out = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v
    return out.transpose(1, 2).reshape(B, T, H * d) @ w[p + "o_proj.weight"].T


def llama_logits(w: dict[str, torch.Tensor], cfg: TTTModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [B, T] -> logits [B, T, V] of the Llama model with Hugging Face tensors `w` (cfg: its
    sizes, eps, rope_theta and head tying, as conversion reads them)."""
    D, eps = cfg.hidden_size, cfg.rms_norm_eps
    h = w["model.embed_tokens.weight"][tokens]
    for i in range(cfg.num_layers):
        r = f"model.layers.{i}."
        h = h + _attention(w, r + "self_attn.", F.rms_norm(h, (D,), w[r + "input_layernorm.weight"], eps), cfg)
        x = F.rms_norm(h, (D,), w[r + "post_attention_layernorm.weight"], eps)
        gate, up = (x @ w[f"{r}mlp.{n}_proj.weight"].T for n in ("gate", "up"))
        h = h + (F.silu(gate) * up) @ w[r + "mlp.down_proj.weight"].T
    head = w["model.embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]
    return F.rms_norm(h, (D,), w["model.norm.weight"], eps) @ head.T
