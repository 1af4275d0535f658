"""The reference model as a plain function of reference-format tensors: the model's twin.

Dense (no tensor parallelism), batch-first, written from the specification with the reference's
own formulations where ours differ (RoPE by permute / rotate-half / un-permute, torch's
LayerNorm for the post-norm, the conv1d padding of `nn.Conv1d`) and the primal inner loop. The
tests compare the megatron-core model against it at every TP size; conversions use it to check
themselves. A LaCT model's layers are LaCT's LaCTSWIGLULayer (lact_llm/lact_model/
layer_lact_swiglu.py) as its published configs set it, with plain softmax attention and the
float64 twin of the fast-weight op.
"""

import math

import torch
import torch.nn.functional as F

from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.layers import stat_dtype
from megatron_ttt.ops import TTTInputs, TTTState, ttt_primal
from megatron_ttt.ops.attention import causal_attention_reference
from megatron_ttt.ops.lact_reference import lact_swiglu_reference


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(stat_dtype(x))
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[B, T, C] through nn.Conv1d(C, C, K, groups=C, padding=K-1), the first T outputs."""
    y = F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=weight.shape[0])
    return y[..., : x.shape[1]].transpose(1, 2)


def _rope(q: torch.Tensor, k: torch.Tensor, cfg: TTTModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, T, d = q.shape
    dtype = stat_dtype(q)
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(dtype) / d))
    freqs = (torch.arange(T) % cfg.mini_batch_size).to(dtype)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)

    def rotate_half(x):
        return torch.cat((-x[..., d // 2:], x[..., : d // 2]), dim=-1)

    def rotate(x):
        x = x.reshape(B, H, T, d // 2, 2).transpose(3, 4).reshape(B, H, T, d)  # JAX pair order
        x = x * cos + rotate_half(x) * sin
        return x.reshape(B, H, T, 2, d // 2).transpose(3, 4).reshape(B, H, T, d)

    return rotate(q), rotate(k)


def _mixer(w: dict[str, torch.Tensor], p: str, x: torch.Tensor, cfg: TTTModelConfig) -> torch.Tensor:
    B, T, D = x.shape
    H, d = cfg.num_heads, cfg.head_dim
    if cfg.share_qk:
        shared = x @ w[p + "q_proj.weight"].T
        q = _conv(shared, w[p + "conv_q.weight"], w[p + "conv_q.bias"])
        k = _conv(shared, w[p + "conv_k.weight"], w[p + "conv_k.bias"])
    else:
        q, k = x @ w[p + "q_proj.weight"].T, x @ w[p + "k_proj.weight"].T
    v = x @ w[p + "v_proj.weight"].T
    q, k, v = (t.reshape(B, T, H, d).transpose(1, 2) for t in (q, k, v))
    q, k = _rope(q, k, cfg)
    logits = torch.einsum("btc,hc->bht", x, w[p + "learnable_ttt_lr_weight"][:, 0]) + w[p + "learnable_ttt_lr_bias"]
    lr = cfg.ttt_base_lr * torch.sigmoid(logits) / d
    layers = len(cfg.inner_widths) - 1
    inner = tuple(t for j in range(1, layers + 1) for t in (w[f"{p}W{j}"], w[f"{p}b{j}"][:, 0]))
    inputs = TTTInputs(q, k, v, lr, w[p + "learnable_token_idx"], w[p + "ttt_norm_weight"], w[p + "ttt_norm_bias"])
    z, _ = ttt_primal(inputs, TTTState.initial(inner, B), mini_batch_size=cfg.mini_batch_size)
    out = F.layer_norm(z.transpose(1, 2).reshape(B, T, D), (D,), w[p + "post_norm.weight"], w[p + "post_norm.bias"], 1e-6)
    if cfg.use_gate:
        out = F.gelu(x @ w[p + "g_proj.weight"].T, approximate="tanh") * out
    return out @ w[p + "o_proj.weight"].T


def _lact_rope(x: torch.Tensor, cfg: TTTModelConfig) -> torch.Tensor:
    """[b, s, n_h, d] rotated as fla's RotaryEmbedding (rotate-half) at positions 0..s-1."""
    d = x.shape[-1]
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(stat_dtype(x)) / d))
    freqs = torch.arange(x.shape[1]).to(inv_freq.dtype)[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos().to(x.dtype)[:, None], freqs.sin().to(x.dtype)[:, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _lact_fast_weight(w: dict[str, torch.Tensor], name: str, cfg: TTTModelConfig) -> torch.Tensor:
    if not cfg.lact_fw_rank:
        return w[name]
    W = w[name + ".w_left"] @ w[name + ".w_right"]
    return W + torch.eye(*W.shape[1:], dtype=W.dtype).unsqueeze(0) * 0.5


def _lact_mixer(w: dict[str, torch.Tensor], p: str, x: torch.Tensor, cfg: TTTModelConfig) -> torch.Tensor:
    """LaCTSWIGLULayer.forward, batch-first: window attention on q, k, v; the fast weights on
    silu(rescaled q, k), silu(v); their sum through o_proj."""
    b, s, D = x.shape
    n_h, n_attn, d = cfg.lact_heads, cfg.num_heads, cfg.head_dim
    q, k, v = (x @ w[f"{p}{n}_proj.weight"].T for n in "qkv")
    fast_q = q * w[p + "qk_scale"][:, 0] + w[p + "qk_offset"][:, 0]
    fast_k = k * w[p + "qk_scale"][:, 1] + w[p + "qk_offset"][:, 1]
    q, k = (_lact_rope(t.reshape(b, s, n_attn, d), cfg) for t in (q, k))
    o = causal_attention_reference(q.transpose(1, 2), k.transpose(1, 2), v.reshape(b, s, n_attn, d).transpose(1, 2),
                                   cfg.attention_window)
    o = o.transpose(1, 2).reshape(b, s, D)

    def fw_heads(t):  # "b s (n_h d) -> (b n_h) s d"
        return t.reshape(b, s, n_h, -1).transpose(1, 2).reshape(b * n_h, s, -1)

    def l2_norm(t):
        return t / (t.norm(dim=-1, keepdim=True) + 1e-5)

    fast_q, fast_k, fast_v = (fw_heads(F.silu(t)) for t in (fast_q, fast_k, v))
    fast_q, fast_k = l2_norm(fast_q), l2_norm(fast_k)
    fast_q, fast_k = (_lact_rope(t.reshape(b, n_h, s, -1).transpose(1, 2).reshape(b, s, n_attn, d), cfg)
                      .reshape(b, s, n_h, -1).transpose(1, 2).reshape(b * n_h, s, -1) for t in (fast_q, fast_k))
    fw = [_lact_fast_weight(w, p + "w0", cfg), w[p + "w1"], _lact_fast_weight(w, p + "w2", cfg)]
    fw = [t.repeat(b, 1, 1) for t in fw]
    lr = F.softplus((x @ w[p + "lr_proj.weight"].T + w[p + "lr_proj.bias"]) + (0.001 + math.log(-math.expm1(-0.001))))
    lr0, lr1, lr2 = fw_heads(lr).chunk(3, dim=-1)
    momentum = None
    if cfg.lact_momentum:
        momentum = fw_heads(torch.sigmoid(x @ w[p + "momentum_proj.0.weight"].T + w[p + "momentum_proj.0.bias"]))
    fw_x, _ = lact_swiglu_reference(*fw, fast_q, fast_k, fast_v, lr0, lr1, lr2, cfg.lact_chunk_size, cfg.lact_muon,
                                    momentum)
    normed = _rms(fw_x, w[p + "ttt_norm.weight"], 1e-5)
    ttt_scale = fw_heads(F.silu(x @ w[p + "ttt_scale_proj.weight"].T + w[p + "ttt_scale_proj.bias"]))
    ttt_x = (normed * ttt_scale).reshape(b, n_h, s, -1).transpose(1, 2).reshape(b, s, D)
    return (o + ttt_x) @ w[p + "o_proj.weight"].T


def reference_logits(w: dict[str, torch.Tensor], cfg: TTTModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [B, T] -> logits [B, T, V] of the reference model with weights `w`."""
    eps = cfg.rms_norm_eps
    h = w["model.embed_tokens.weight"][tokens]
    for i in range(cfg.num_layers):
        r = f"model.layers.{i}."
        if cfg.pre_conv:
            h = h + _conv(_rms(h, w[r + "conv.norm.weight"], eps), w[r + "conv.conv.weight"], w[r + "conv.conv.bias"])
        normed = _rms(h, w[r + "seq_norm.weight"], eps)
        if cfg.layer_type == "lact":
            h = h + _lact_mixer(w, r + "attn.", normed, cfg)
        else:
            h = h + _mixer(w, r + "seq_modeling_block.", normed, cfg)
        x = _rms(h, w[r + "ffn_norm.weight"], eps)
        h = h + (F.silu(x @ w[r + "mlp.gate_proj.weight"].T) * (x @ w[r + "mlp.up_proj.weight"].T)) @ w[r + "mlp.down_proj.weight"].T
    head = w["model.embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]
    return _rms(h, w["model.norm.weight"], eps) @ head.T
