"""A small GPT: a decoder-only transformer in plain PyTorch, a byte-level
tokenizer, and a data loader over a corpus every machine with Python has.

    model = GPT(GPTConfig())               # ~10.8M parameters by default
    data = ByteCorpus()                    # Python's standard library, as bytes
    x, y = data.batch("train", 16, 128, generator)
    loss = model(x, y)

The model: token + learned position embeddings, pre-LayerNorm blocks of
causal self-attention (F.scaled_dot_product_attention) and a GELU MLP, a
final LayerNorm and an LM head that shares its weight with the token
embedding. The corpus: the ``.py`` files of the running Python's standard
library (``sysconfig.get_paths()["stdlib"]``), sorted, concatenated as UTF-8
(bytes that do not decode become U+FFFD), capped at ``max_bytes``, split
95/5 into train and validation; the vocabulary is the 256 byte values.
"""
from __future__ import annotations

import math
import os
import sysconfig
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 256  # bytes
    block_size: int = 128  # context length
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled residual projections
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied weight once

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx, targets: (B, T) token ids. Returns the mean cross-entropy loss
        when targets are given, else the logits (B, T, vocab)."""
        T = idx.shape[1]
        assert T <= self.cfg.block_size, f"sequence of {T} > block_size {self.cfg.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def encode(text: str) -> torch.Tensor:
    """Byte-level tokenizer: the UTF-8 bytes are the token ids (vocab 256)."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def stdlib_bytes(max_bytes: int = 8 << 20) -> bytes:
    """The standard library's .py files, sorted by path, as UTF-8,
    concatenated and cut at max_bytes."""
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root)
                   for f in files if f.endswith(".py"))
    parts, total = [], 0
    for p in paths:
        if total >= max_bytes:
            break
        with open(p, encoding="utf-8", errors="replace") as f:
            parts.append(f.read().encode("utf-8"))
        total += len(parts[-1])
    return b"".join(parts)[:max_bytes]


class ByteCorpus:
    """The corpus as byte tokens, split 95/5 into train/val; batch() draws
    random windows of block_size+1 bytes (inputs and next-byte targets)."""

    def __init__(self, max_bytes: int = 8 << 20, val_fraction: float = 0.05):
        data = torch.frombuffer(bytearray(stdlib_bytes(max_bytes)), dtype=torch.uint8)
        n = int(len(data) * (1 - val_fraction))
        self.splits = {"train": data[:n], "val": data[n:]}

    def batch(self, split: str, batch_size: int, block_size: int,
              generator: torch.Generator | None = None):
        data = self.splits[split]
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        w = torch.stack([data[i:i + block_size + 1] for i in ix.tolist()]).long()
        return w[:, :-1], w[:, 1:]


if __name__ == "__main__":
    cfg = GPTConfig()
    model = GPT(cfg)
    data = ByteCorpus()
    print(f"{cfg}\nparameters: {model.num_params():,}; corpus: "
          f"{len(data.splits['train']):,} train / {len(data.splits['val']):,} val bytes")
    x, y = data.batch("train", 4, cfg.block_size, torch.Generator().manual_seed(0))
    print(f"loss at init: {model(x, y).item():.3f} (ln 256 = {math.log(256):.3f})")
