"""A small transformer for the tests: embeddings, one pre-LayerNorm block
with causal self-attention and an MLP, a head; deterministic batches by
(step, rank, micro-batch)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, SEQ = 32, 12


class TinyGPT(nn.Module):
    def __init__(self, hidden: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(VOCAB, hidden)
        self.pos = nn.Parameter(torch.randn(SEQ, hidden) * 0.02)
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)  # a key bias gets only rounding noise
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.out = nn.Linear(4 * hidden, hidden)
        self.head = nn.Linear(hidden, VOCAB)
        self.temperature = nn.Parameter(torch.tensor(1.0))  # a 0-dim param

    def forward(self, idx, targets):
        b, t = idx.shape
        x = self.tok(idx) + self.pos[:t]
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        split = lambda z: z.view(b, t, self.heads, -1).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, -1))
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        logits = self.head(x) * self.temperature
        return F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))


def batch(step: int, rank: int, micro: int, size: int = 8):
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    x = torch.randint(0, VOCAB, (size, SEQ + 1), generator=g)
    x[:, 1::2] = (x[:, 0::2][:, : x[:, 1::2].shape[1]] * 7 + 3) % VOCAB  # learnable structure
    return x[:, :-1], x[:, 1:]
