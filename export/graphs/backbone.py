"""backbone.onnx: Qwen2 over inputs_embeds with the KV cache as flat graph inputs and outputs.

One graph serves prefill and decode: new-token count, past length and batch are dynamic. Written
out as plain math over the checkpoint's modules (RMSNorm, rotary, grouped-query attention, SwiGLU)
so the graph holds only standard ONNX ops; the explicit mask input makes padding and batching work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim
from transformers import Qwen2ForCausalLM

from covo_edge.runtime.manifest import GRAPH_IO, kv_names

from ..model import CovoAudio
from . import BATCH, MAX_PREFILL, GraphExport


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As Qwen2: normalise in float32, scale in the input dtype."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Backbone(nn.Module):
    """(inputs_embeds [B,S,H], attention_mask [B,P+S], position_ids [B,S], past k/v [B,kv,P,d] per layer)
    -> (logits of the last position [B,V], present k/v [B,kv,P+S,d] per layer)."""

    def __init__(self, llm: Qwen2ForCausalLM, head_dim: int):
        super().__init__()
        cfg = llm.config
        self.model = llm.model
        self.lm_head = llm.lm_head
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = head_dim
        self.eps = cfg.rms_norm_eps
        theta = cfg.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def attention(self, layer, x, cos, sin, bias, past_k, past_v):
        b, s, _ = x.shape
        attn = layer.self_attn
        q = attn.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = torch.cat([past_k, k * cos + rotate_half(k) * sin], dim=2)
        v = torch.cat([past_v, v], dim=2)
        group = self.heads // self.kv_heads
        qg = q.reshape(b, self.kv_heads, group * s, self.head_dim)
        scores = (qg @ k.transpose(2, 3)).view(b, self.kv_heads, group, s, -1) * self.head_dim**-0.5
        probs = torch.softmax(scores.float() + bias[:, None], dim=-1).to(v.dtype)
        out = (probs.view(b, self.kv_heads, group * s, -1) @ v).view(b, self.heads, s, self.head_dim)
        return attn.o_proj(out.transpose(1, 2).reshape(b, s, -1)), k, v

    def forward(self, inputs_embeds, attention_mask, position_ids, past):
        s = inputs_embeds.shape[1]
        total = attention_mask.shape[1]
        query_pos = torch.arange(total - s, total, device=inputs_embeds.device)
        key_pos = torch.arange(total, device=inputs_embeds.device)
        allowed = (key_pos[None, :] <= query_pos[:, None])[None] & (attention_mask[:, None, :] > 0)
        bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
        bias = bias[:, None]  # [B, 1(group), S, P+S]
        freqs = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
        cos, sin = emb.cos().to(inputs_embeds.dtype), emb.sin().to(inputs_embeds.dtype)
        h = inputs_embeds
        present = []
        for i, layer in enumerate(self.model.layers):
            a, k, v = self.attention(layer, rms_norm(h, layer.input_layernorm.weight, self.eps), cos, sin, bias,
                                     past[2 * i], past[2 * i + 1])
            h = h + a
            m = layer.mlp
            x = rms_norm(h, layer.post_attention_layernorm.weight, self.eps)
            h = h + m.down_proj(F.silu(m.gate_proj(x)) * m.up_proj(x))
            present += [k, v]
        # The last position as [B, 1, H]: the LM head stays a MatMul, which the quantizers' weight passes take.
        last = rms_norm(h[:, -1:], self.model.norm.weight, self.eps)
        return (self.lm_head(last)[:, 0].float(), *present)


def graph(model: CovoAudio, max_context: int) -> GraphExport:
    """Traced with batch 2, 3 new tokens and 4 past: tracing one new token would bake in the decode path."""
    cfg = model.config.llm
    backbone = Backbone(model.llm, model.config.head_dim)
    b, s, p = 2, 3, 4
    past = tuple(torch.randn(b, backbone.kv_heads, p, backbone.head_dim) for _ in range(2 * cfg.num_hidden_layers))
    args = (
        torch.randn(b, s, cfg.hidden_size),
        torch.ones(b, p + s, dtype=torch.int64),
        torch.arange(p, p + s)[None].expand(b, s).contiguous(),
        past,
    )
    inputs, outputs = GRAPH_IO["backbone"]
    names_in = [*inputs, *kv_names("past_key_values", cfg.num_hidden_layers)]
    names_out = [*outputs, *kv_names("present", cfg.num_hidden_layers)]
    seq, past_len = Dim("sequence"), Dim("past_sequence")
    dynamic = (
        {0: BATCH, 1: seq},
        {0: BATCH, 1: Dim("total_sequence")},  # the dynamo exporter wants the mask length as its own dim
        {0: BATCH, 1: seq},
        tuple({0: BATCH, 2: past_len} for _ in past),  # flat past tensors: a nested tuple
    )
    # Two profiles, each self-consistent at every corner (past + sequence = total): prefill takes
    # long new-token runs on a shorter history, decode one token on a history up to the full context.
    c = max_context
    p = min(MAX_PREFILL, c // 2)
    prefill = {"batch": (1, 1, 2), "sequence": (1, min(256, p), p), "past_sequence": (0, 0, c - p),
               "total_sequence": (1, min(256, p), c)}
    decode = {"batch": (1, 1, 2), "sequence": (1, 1, 1), "past_sequence": (0, c // 2 - 1, c - 1),
              "total_sequence": (1, c // 2, c)}
    return GraphExport("backbone", backbone, args, dynamic, [prefill, decode], names_in, names_out)
