"""The synthetic workspace generator that the loss-table and analysis tests build on."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lossdb.synthetic import SyntheticDataset, SyntheticRun, assign_buckets, make_workspace


def test_assign_buckets_by_hand():
    counts = np.array([5, 50, 10, 30, 5])  # sorted: ids 1 (50), 3 (30), 2 (10), 0 (5), 4 (5)
    rank, bucket = assign_buckets(counts, bucket_tokens=20)
    assert rank.tolist() == [3, 0, 2, 1, 4]
    # running totals 50 (crosses 20, 40) | 80 (crosses 60, 80) | 90 | 95 | 100 (crosses 100)
    assert bucket.tolist() == [2, 0, 2, 1, 2]


def test_workspace_invariants(tmp_path):
    ws = make_workspace(
        tmp_path,
        [SyntheticDataset(n_sequences=40, seq_len=8, vocab_size=12)],
        [SyntheticRun("a", steps=5, batch_size=4, ranks=2, segment_tokens=100, noise=0.0)],
    )
    rows, data = ws.runs["a"], ws.datasets["synth"]
    pairs = list(zip(rows.seq.tolist(), rows.position.tolist()))
    assert len(pairs) == len(set(pairs)) == 5 * 2 * 4 * 8  # every (seq, position) once
    assert (rows.token_id == data.tokens[rows.seq, rows.position + 1]).all()
    assert (rows.segment == rows.step * 2 * 4 * 8 // 100).all()
    vocab = pq.read_table(tmp_path / "data/synth/vocab.parquet").to_pydict()
    assert vocab["count"] == np.bincount(data.tokens[:, 1:].ravel(), minlength=12).tolist()
    info = json.loads((tmp_path / "runs/a/run.json").read_text())
    assert info["tokens_trained"] == len(pairs) and info["config"]["train"]["batch_size"] == 8
    # noise 0: the stored loss is the documented formula, rounded to float16
    rank = np.array(vocab["rank"])[rows.token_id]
    word_start = np.array(vocab["is_word_start"])[rows.token_id]
    tokens_before = rows.step * 2 * 4 * 8
    formula = ((2 + 1.5 / np.sqrt(1 + rows.position)) * (1 + 0.6 * np.exp(-tokens_before / (len(pairs) / 3)))
               * (0.7 + 0.6 * rank / 12) * np.where(word_start, 1.15, 1.0))
    assert rows.loss.tolist() == formula.astype(np.float32).astype(np.float16).astype(np.float32).tolist()


def test_config_overrides_are_deep_merged(tmp_path):
    ws = make_workspace(tmp_path, runs=[SyntheticRun("r", steps=1, config={"model": {"pos_encoding": "alibi"}})])
    config = ws.run_json["r"]["config"]
    assert config["model"] == {"n_layer": 2, "n_head": 2, "d_model": 32, "pos_encoding": "alibi"}


def test_too_many_steps_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="exceed the 64 sequences"):
        make_workspace(tmp_path, runs=[SyntheticRun("r", steps=17, batch_size=4)])
