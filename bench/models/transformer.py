"""A small causal transformer language model, meant to be read top to bottom.

    tokens ─► tok_emb + pos_emb ─► n_layer × Block ─► ln_f ─► head ─► logits (B×T×vocab)

    Block (pre-LayerNorm, residual):  x = x + attn(ln1(x));  x = x + mlp(ln2(x))
    attn:  qkv (one Linear, d → 3d) → per head softmax(q kᵀ / √d_head + causal mask) v → proj (d → d)
    mlp:   fc1 (d → d_ff) → GELU → fc2 (d_ff → d)

Design choices, and why:
- Attention is written out (matmul, mask, softmax, matmul) instead of calling
  ``F.scaled_dot_product_attention``: fused attention kernels do not all support
  double backward, which curvature probes (Hessian-vector products) need.
- No dropout: runs are deterministic and data-parallel equals single-process exactly.
- The output ``head`` is not tied to ``tok_emb``: each weight matrix is its own layer, so the
  per-layer curvature and optimizer statistics are about one matrix each.
- Module names (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, ``head``) are what the layer
  tagger of `optimizers.layer_types` recognises.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees positions ≤ t only."""

    def __init__(self, d_model: int, n_head: int, max_seq_len: int) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)  # fused query, key and value projections
        self.proj = nn.Linear(d_model, d_model)
        causal = torch.tril(torch.ones(max_seq_len, max_seq_len, dtype=torch.bool))
        # Not persistent: derived from max_seq_len, so it does not belong in checkpoints.
        self.register_buffer("causal", causal.view(1, 1, max_seq_len, max_seq_len), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) → (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        scores = scores.masked_fill(~self.causal[:, :, :T, :T], float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward network."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """One pre-LayerNorm transformer block."""

    def __init__(self, d_model: int, n_head: int, d_ff: int, max_seq_len: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, max_seq_len)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Token ids (B×T, T ≤ max_seq_len) → next-token logits (B×T×vocab_size)."""

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        d_model: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        d_ff: int | None = None,
    ) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)  # learned absolute positions
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, d_ff or 4 * d_model, max_seq_len) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights(n_layer)

    def _init_weights(self, n_layer: int) -> None:
        # GPT-2's scheme: N(0, 0.02) everywhere, zero biases, and the two projections that write
        # into the residual stream scaled by 1/√(2·n_layer) so its variance does not grow with depth.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.fc2):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.max_seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))
