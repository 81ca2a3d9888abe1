"""Training speed on this machine: our trainer with recording on and off, and a plain nanoGPT loop.

    python bench/bench_train.py [--config configs/tiny/baseline.toml] [--steps 30] [--repeats 5] [--threads 1]

The contenders train the same model size on the same batches (a stdlib data set built in a
temporary workspace, seq_len from the config's data set rule: 256 for the tiny configs):

  ours/record    train.trainer.train() as `cli.py train` runs it, every token's loss recorded
  ours/no-record the same with [lossdb] record = false
  nanogpt        a plain nanoGPT-style GPT (learned positions, fused qkv, GELU MLP, no bias,
                 untied head) in a plain loop: AdamW, clipping, the same micro-batches
  ours/learned-pos  ours/record with model.pos = learned: the same architecture as nanogpt,
                 which sets the trainer's cost apart from the config's position encoding

They run interleaved (A B C A B C ...) so that load from other processes on a shared machine
hits all alike, and each figure is the best of the repeats (other processes only ever
slow a run down). Three figures each: tokens/s of the training loop (ours: the trainer's own
figure, checkpoint saves taken out; nanoGPT: its loop), of the whole run by the wall clock,
and per CPU second of the whole run (all threads, the loss writer's included; set-up, and for
ours the step-0 and final checkpoints, included). With other processes on the machine the wall
clock swings by several times; CPU seconds at --threads 1 move far less. The recording cost is also measured directly: the loss writer alone,
fed the same per-step arrays, in CPU seconds per step against a step's CPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lossdb.writer import LossWriter  # noqa: E402
from train.config import ModelConfig, load_config  # noqa: E402
from train.dataset import build_dataset, open_dataset  # noqa: E402
from train.trainer import train  # noqa: E402

# --- the reference: a plain nanoGPT-style model ---------------------------------------------------


class RefAttention(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):  # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, d: int, n_head: int, inner: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = RefAttention(d, n_head)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, inner, bias=False), nn.GELU(), nn.Linear(inner, d, bias=False))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    """nanoGPT's model.py in miniature: token + learned position embeddings, blocks, head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        vocab = cfg.padded_vocab_size
        self.wte = nn.Embedding(vocab, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.h = nn.ModuleList(RefBlock(cfg.d_model, cfg.n_head, cfg.ffn_dim) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.lm_head = nn.Linear(cfg.d_model, vocab, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):  # (B, T), (B, T)
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def run_reference(cfg, ds, steps: int) -> dict[str, float]:
    """Tokens/s of the plain loop over the first `steps` global batches: loop wall clock, whole CPU."""
    wall, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.train.seed)
    model = RefGPT(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            weight_decay=cfg.optim.weight_decay)
    order = np.random.default_rng(cfg.train.seed).permutation(ds.n_sequences)
    B, mb = cfg.train.batch_size, cfg.train.micro_batch_size
    accum = B // mb
    loop = time.perf_counter()
    for step in range(steps):
        batch = torch.from_numpy(ds.tokens[order[step * B : (step + 1) * B]].astype(np.int64))
        for i in range(accum):
            chunk = batch[i * mb : (i + 1) * mb]
            loss = model(chunk[:, :-1], chunk[:, 1:])
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every step
    tokens = steps * B * cfg.model.seq_len
    end = time.perf_counter()
    return {"loop": tokens / (end - loop), "wall": tokens / (end - wall), "cpu": tokens / (time.process_time() - cpu)}


# --- ours ---------------------------------------------------------------------------------------------


def run_ours(config: Path, home: Path, run: str, steps: int, record: bool, *overrides: str) -> dict[str, float]:
    """Tokens/s of train(): its own loop figure (checkpoint saves out), whole wall clock, whole CPU."""
    ds = open_dataset(home, "bench")
    batch_size = load_config(config).train.batch_size
    tokens = steps * batch_size * ds.seq_len
    cfg = load_config(config, ["data.dataset=bench", "train.checkpoint_every=0", "train.log_every=10",
                               f"lossdb.record={str(record).lower()}", f"train.tokens={tokens}", *overrides])
    wall, cpu = time.perf_counter(), time.process_time()  # process time counts the writer's thread too
    result = train(cfg, home=home, run=run, progress=False)
    return {"loop": result.tokens_per_s, "wall": tokens / (time.perf_counter() - wall),
            "cpu": tokens / (time.process_time() - cpu)}


def writer_cost(home: Path, batch: int, seq_len: int, vocab: int, steps: int) -> float:
    """CPU seconds the loss writer spends per step (main-thread write() plus its thread), alone."""
    rng = np.random.default_rng(0)
    seq = np.arange(batch, dtype=np.int64)
    token_ids = rng.integers(0, vocab, (batch, seq_len)).astype(np.uint16)
    loss = rng.uniform(0, 10, (batch, seq_len)).astype(np.float16)
    start = time.process_time()  # the whole process: the writer's thread included
    with LossWriter(home / "writer-bench", "bench", rank=0) as writer:
        for step in range(steps):
            writer.write(step, step // 10, seq + step * batch, token_ids, loss)
        writer.flush()
    return (time.process_time() - start) / steps


# --- main ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "tiny" / "baseline.toml")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: the trainer's default, all cores); 1 gives stable CPU figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the trainer then leaves the count alone

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        home = Path(tmp)
        base = load_config(args.config)
        rows = args.steps * base.train.batch_size
        build_dataset(home, "bench", source="stdlib", tokenizer="bpe:4096", seq_len=args.seq_len,
                      tokens=rows * (args.seq_len + 1), windows="all", progress=False)
        ds = open_dataset(home, "bench")
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, seq_len=ds.seq_len,
                                                                  vocab_size=ds.vocab_size))
        print(f"config {args.config.name}: d_model {cfg.model.d_model} × {cfg.model.n_layer} layers, "
              f"{cfg.model.n_head} heads, seq_len {ds.seq_len}, vocab {ds.vocab_size}, batch {cfg.train.batch_size} "
              f"(micro {cfg.train.micro_batch_size}), {args.steps} steps × {args.repeats} repeats, "
              f"torch threads {torch.get_num_threads()}")
        contenders = {
            "ours/record": lambda r: run_ours(args.config, home, f"rec{r}", args.steps, True),
            "ours/no-record": lambda r: run_ours(args.config, home, f"norec{r}", args.steps, False),
            "nanogpt": lambda r: run_reference(cfg, ds, args.steps),
            # the config's model with nanoGPT's learned positions instead of RoPE: what the trainer
            # itself costs against the plain loop, with the model's position encoding set apart
            "ours/learned-pos": lambda r: run_ours(args.config, home, f"learned{r}", args.steps, True,
                                                   "model.pos=learned"),
        }
        results: dict[str, list[dict]] = {name: [] for name in contenders}
        for repeat in range(args.repeats):
            for name, measure in contenders.items():
                results[name].append(measure(repeat))
            print(f"  repeat {repeat + 1} (loop tokens/s): "
                  + ", ".join(f"{k} {v[-1]['loop']:,.0f}" for k, v in results.items()), flush=True)
        cpu_per_step = writer_cost(home, cfg.train.batch_size, ds.seq_len, ds.vocab_size, steps=200)

    # best of the repeats: other processes only ever slow a run down
    best = {name: {key: max(r[key] for r in runs) for key in ("loop", "wall", "cpu")} for name, runs in results.items()}
    print(f"tokens/s, best of {args.repeats}:  training loop (wall)   whole run (wall)   whole run (per CPU s)")
    for name, b in best.items():
        print(f"  {name:<15} {b['loop']:>20,.0f} {b['wall']:>18,.0f} {b['cpu']:>21,.0f}")
    for key, label in (("loop", "training loop"), ("wall", "whole run, wall"), ("cpu", "whole run, CPU")):
        print(f"{label:>16}: recording on vs off {100 * (best['ours/record'][key] / best['ours/no-record'][key] - 1):+.1f}%, "
              f"ours (recording) / nanoGPT {best['ours/record'][key] / best['nanogpt'][key]:.3f}, "
              f"ours (recording, learned positions) / nanoGPT {best['ours/learned-pos'][key] / best['nanogpt'][key]:.3f}")
    step_cpu_s = cfg.train.batch_size * ds.seq_len / best["ours/no-record"]["cpu"]
    print(f"loss writer alone: {1e3 * cpu_per_step:.2f} ms CPU per step of {1e3 * step_cpu_s:.0f} ms CPU "
          f"= {100 * cpu_per_step / step_cpu_s:.2f}% of a step")


if __name__ == "__main__":
    main()
