"""A tiny text corpus and data set for the tests that train (trainer, suites, sweeps)."""

from pathlib import Path

import numpy as np

from train.dataset import build_dataset

WORDS = "the a of to and in is was for on that with as by at from it an be this which or".split()
WORDS += [f"w{i}" for i in range(60)]


def build_tiny_dataset(home: Path, corpus: Path, *, seq_len: int, n_sequences: int, n_docs: int,
                       seed: int = 0, name: str = "tiny") -> Path:
    """Write `n_docs` documents of 120 random sentences into `corpus`, then build data set `name`
    under `home` with bpe:300: every full window (`windows="all"`) until `n_sequences` rows."""
    corpus.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for d in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS, rng.integers(4, 13))).capitalize() + "." for _ in range(120)]
        (corpus / f"doc{d:03d}.txt").write_text(" ".join(sentences))
    return build_dataset(home, name, source=str(corpus), tokenizer="bpe:300", seq_len=seq_len,
                         tokens=n_sequences * (seq_len + 1), windows="all", progress=False)
