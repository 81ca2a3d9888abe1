"""Paired per-token comparison (analysis/paired.py, the `paired` SQL macro, charts and CLI).

Synthetic pairs are written here with LossWriter directly: every (seq, position) gets a known
loss in each run, so every estimate is checked against plain-Python loops over those arrays,
and the statistics against a known injected difference over repeated draws.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import lossdb
from analysis import paired, paired_charts
from analysis.paired import PairAccumulator, PairingError, Rows, VocabGroups, estimate
from lossdb.synthetic import VOCAB_SCHEMA
from lossdb.writer import LossWriter, round_to_float16

VOCAB = 12
WORD_START = np.arange(VOCAB) % 2 == 0  # even ids start a word
BUCKET = np.arange(VOCAB) // 4  # three buckets of four ids
PROBS = 1.0 / np.arange(1, VOCAB + 1)
PROBS /= PROBS.sum()
GROUPS = VocabGroups(bucket=BUCKET.astype(np.int64), word_start=WORD_START.astype(np.int64), n_buckets=3)


# --- synthetic pairs -------------------------------------------------------------------------------


def draw_tokens(rng, n_seq: int, seq_len: int) -> np.ndarray:
    return rng.choice(VOCAB, size=(n_seq, seq_len + 1), p=PROBS).astype(np.int32)


def draw_losses(rng, targets, word_start_delta=-0.05, seq_sd=0.1, token_sd=0.2):
    """(loss_a, loss_b), float16-rounded like the table: B = A + word_start_delta on word-start
    targets + a per-sequence offset (correlates a sequence's deltas) + per-token noise."""
    n_seq, seq_len = targets.shape
    loss_a = 3.0 + 0.3 * rng.standard_normal((n_seq, seq_len))
    loss_b = (loss_a + word_start_delta * WORD_START[targets] + seq_sd * rng.standard_normal((n_seq, 1))
              + token_sd * rng.standard_normal((n_seq, seq_len)))
    return round_to_float16(loss_a.astype(np.float32)), round_to_float16(loss_b.astype(np.float32))


def write_vocab(home: Path, dataset: str) -> None:
    folder = home / "data" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    text = [(" w" if ws else "s") + str(i) for i, ws in enumerate(WORD_START)]
    table = pa.Table.from_arrays(
        [pa.array(np.arange(VOCAB, dtype=np.int32)), pa.array(text), pa.array(np.ones(VOCAB, dtype=np.int64)),
         pa.array(np.arange(VOCAB, dtype=np.int32)), pa.array(BUCKET.astype(np.int32)), pa.array(WORD_START)],
        schema=VOCAB_SCHEMA,
    )
    pq.write_table(table, folder / "vocab.parquet")


def write_run(home: Path, name: str, tokens, losses, order, batch: int, *, dataset="synth", ranks=1,
              flush_every=None, segment_tokens=128, save_order=True, json_extra=None, sha=None) -> None:
    """Train (write) `order` in steps of `batch` sequences, rank r writing the r-th block of each
    step, like the trainer; losses[seq, position] is the loss recorded for that token."""
    seq_len = tokens.shape[1] - 1
    steps = len(order) // batch
    writers = [LossWriter(home / "lossdb", name, rank=r) for r in range(ranks)]
    local = batch // ranks
    for step in range(steps):
        seqs = order[step * batch:(step + 1) * batch]
        segment = step * batch * seq_len // segment_tokens
        for r, writer in enumerate(writers):
            mine = seqs[r * local:(r + 1) * local]
            writer.write(step, segment, mine, tokens[mine, 1:], losses[mine])
        if flush_every and (step + 1) % flush_every == 0:
            for writer in writers:
                writer.flush()
    for writer in writers:
        writer.close()
    folder = home / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "run": name, "status": "finished", "dataset": dataset,
        "dataset_sha256": sha or hashlib.sha256(tokens.tobytes()).hexdigest(),
        "seed": 0, "tokens_trained": steps * batch * seq_len, "tokens_per_step": batch * seq_len,
        "total_steps": steps, "config": {"data": {"dataset": dataset, "seq_len": seq_len}},
    }
    if save_order:
        np.save(folder / "order.npy", np.asarray(order, dtype=np.int64))
        info["order_sha256"] = hashlib.sha256(np.asarray(order, dtype=np.int64).tobytes()).hexdigest()
    info.update(json_extra or {})
    (folder / "run.json").write_text(json.dumps(info))


N_SEQ, SEQ_LEN, BATCH = 48, 16, 4  # 12 steps of 64 tokens; segments of 128 tokens = 2 steps


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """One data set; runs a, b (the pair: b helps word starts), a2 (a's noise twin), and runs
    that must be refused or only partly paired."""
    home = tmp_path_factory.mktemp("paired")
    rng = np.random.default_rng(7)
    tokens = draw_tokens(rng, N_SEQ, SEQ_LEN)
    targets = tokens[:, 1:]
    loss_a, loss_b = draw_losses(rng, targets, -0.3, 0.05, 0.1)
    _, loss_a2 = draw_losses(rng, targets, 0.0, 0.05, 0.1)
    loss_a2 = round_to_float16(loss_a + (loss_a2 - 3.0) * 0.1)  # a's losses plus small noise
    loss_b[targets == 5] -= 0.5  # one id that b learned much better (sub-word 5)
    order = np.random.default_rng(1).permutation(N_SEQ)
    other = np.random.default_rng(2).permutation(N_SEQ)
    write_vocab(home, "synth")
    write_run(home, "a", tokens, loss_a, order, BATCH, flush_every=5)
    # b: two ranks and other part boundaries; no order.npy: the rows decide
    write_run(home, "b", tokens, loss_b, order, BATCH, ranks=2, flush_every=3, save_order=False)
    write_run(home, "a2", tokens, loss_a2, order, BATCH, flush_every=4)
    write_run(home, "shuffled", tokens, loss_b, other, BATCH)
    write_run(home, "shuffled-bare", tokens, loss_b, other, BATCH, save_order=False)
    write_run(home, "other-data", tokens, loss_b, order, BATCH, sha="f" * 64)
    write_run(home, "big-batch", tokens, loss_b, order, 2 * BATCH, save_order=False)
    write_run(home, "big-batch-bare", tokens, loss_b, order, 2 * BATCH, save_order=False,
              json_extra={"tokens_per_step": None})
    write_run(home, "short", tokens, loss_b, order[: 6 * BATCH], BATCH, save_order=False)
    write_run(home, "no-sha", tokens, loss_b, order, BATCH, json_extra={"dataset_sha256": None})
    return {"home": home, "tokens": tokens, "order": order, "a": loss_a, "b": loss_b, "a2": loss_a2}


@pytest.fixture(scope="module")
def con(ws):
    return lossdb.connect(ws["home"])


@pytest.fixture(scope="module")
def result(con):
    return paired.pair_runs(con, "a", "b")


# --- slow references ---------------------------------------------------------------------------


def reference_rows(ws, run_b="b", steps=None):
    """(step, segment, seq, position, token_id, loss_a, loss_b) of every paired token, by loops."""
    rows = []
    n_steps = len(ws["order"]) // BATCH if steps is None else steps
    for step in range(n_steps):
        for seq in ws["order"][step * BATCH:(step + 1) * BATCH]:
            for pos in range(SEQ_LEN):
                rows.append((step, step * BATCH * SEQ_LEN // 128, int(seq), pos, int(ws["tokens"][seq, pos + 1]),
                             float(ws["a"][seq, pos]), float(ws[run_b][seq, pos])))
    return rows


def reference_estimate(rows, key):
    """{group: (mean, low, high, n_tokens, n_seqs)}: per-sequence sums, ratio mean, CR1 variance."""
    clusters = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))  # group -> (step, seq) -> [y, n]
    for step, segment, seq, pos, tok, la, lb in rows:
        group = key(step, segment, seq, pos, tok)
        if group is None:
            continue
        cell = clusters[group][(step, seq)]
        cell[0] += lb - la
        cell[1] += 1
    out = {}
    for group, cells in clusters.items():
        ys = [c[0] for c in cells.values()]
        ns = [c[1] for c in cells.values()]
        m, total = len(ys), sum(ns)
        mean = sum(ys) / total
        spread = sum((y - mean * n) ** 2 for y, n in zip(ys, ns))
        se = math.sqrt(m / (m - 1) * spread / total**2)
        t = paired.t_quantile(0.975, m - 1)
        out[group] = (mean, mean - t * se, mean + t * se, total, m)
    return out


def bin_of(pos):
    starts = paired.log_position_bins(SEQ_LEN)
    return int(starts[np.searchsorted(starts, pos, side="right") - 1])


KEYS = {
    "segment": lambda step, seg, seq, pos, tok: seg,
    "position": lambda step, seg, seq, pos, tok: pos,
    "position_bin": lambda step, seg, seq, pos, tok: bin_of(pos),
    "bucket": lambda step, seg, seq, pos, tok: int(BUCKET[tok]),
    "word_start": lambda step, seg, seq, pos, tok: bool(WORD_START[tok]),
}
KEY_COLUMN = {"segment": "segment", "position": "position", "position_bin": "position_start",
              "bucket": "bucket", "word_start": "word_start"}


def check_table(table: pl.DataFrame, expected: dict, key_column: str):
    assert table.height == len(expected)
    for row in table.iter_rows(named=True):
        mean, low, high, n, m = expected[row[key_column]]
        assert row["n_tokens"] == n and row["n_sequences"] == m
        assert row["mean_delta"] == pytest.approx(mean, abs=1e-12)
        assert row["low"] == pytest.approx(low, abs=1e-12) and row["high"] == pytest.approx(high, abs=1e-12)


# --- statistics ------------------------------------------------------------------------------------


def test_t_quantile_matches_printed_tables():
    # two-sided 95% critical values from any t table; df 1 and 2 have closed forms
    for df, value in [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (120, 1.9799)]:
        assert paired.t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    assert paired.t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    assert paired.t_quantile(0.025, 7) == pytest.approx(-paired.t_quantile(0.975, 7))
    assert paired.t_quantile(0.975, 1e9) == pytest.approx(1.959964, abs=1e-6)


def test_log_position_bins():
    assert paired.log_position_bins(16).tolist() == [0, 1, 2, 3, 4, 6, 8, 12]
    assert paired.log_position_bins(1024)[-3:].tolist() == [384, 512, 768]
    assert paired.log_position_bins(1).tolist() == [0]


def test_accumulator_matches_loops_over_sequences():
    rng = np.random.default_rng(3)
    tokens = draw_tokens(rng, 30, 8)
    la, lb = draw_losses(rng, tokens[:, 1:])
    acc = PairAccumulator(8, GROUPS)
    steps = np.repeat(np.arange(30) // 5, 8)  # 6 steps of 5 sequences, all in segment 2
    acc.add(2, steps[:80], tokens[:10, 1:].reshape(-1), la[:10].reshape(-1), lb[:10].reshape(-1))
    acc.add(2, steps[80:], tokens[10:, 1:].reshape(-1), la[10:].reshape(-1), lb[10:].reshape(-1))
    acc.finish()
    rows = [(int(steps[s * 8]), 2, s, p, int(tokens[s, p + 1]), float(la[s, p]), float(lb[s, p]))
            for s in range(30) for p in range(8)]
    for grouping in ("position", "bucket", "word_start"):
        stats = estimate(acc.groups[grouping][2])
        expected = reference_estimate(rows, KEYS[grouping])
        for group, (mean, low, high, n, m) in expected.items():
            g = int(group)
            assert stats["mean_delta"][g] == pytest.approx(mean, abs=1e-12)
            assert (stats["low"][g], stats["high"][g]) == pytest.approx((low, high), abs=1e-12)
            assert (stats["n_tokens"][g], stats["n_sequences"][g]) == (n, m)
    # loss_A per group: the plain mean of loss_a over its tokens
    ws = estimate(acc.groups["word_start"][2])
    assert ws["mean_a"][1] == pytest.approx(la[WORD_START[tokens[:, 1:]]].astype(np.float64).mean())
    assert acc.steps == {2: [0, 5]} and acc.rows == 240


def coverage(word_start_delta, draws=200, n_seq=60, seq_len=32, seed=11):
    """Share of draws whose 95% interval covers the truth, per group; and the naive iid interval's."""
    rng = np.random.default_rng(seed)
    p_ws = PROBS[WORD_START].sum()
    p_ws_bucket = [PROBS[(BUCKET == b) & WORD_START].sum() / PROBS[BUCKET == b].sum() for b in range(3)]
    truths = {
        ("segment", 0): word_start_delta * p_ws,
        ("word_start", 1): word_start_delta,
        ("word_start", 0): 0.0,
        ("position", 5): word_start_delta * p_ws,
        ("position_bin", 5): word_start_delta * p_ws,  # positions 6-7
        ("bucket", 1): word_start_delta * p_ws_bucket[1],
        ("bucket", 2): word_start_delta * p_ws_bucket[2],
    }
    covered = defaultdict(int)
    naive_covered = 0
    for _ in range(draws):
        tokens = draw_tokens(rng, n_seq, seq_len)
        la, lb = draw_losses(rng, tokens[:, 1:], word_start_delta)
        acc = PairAccumulator(seq_len, GROUPS)
        acc.add(0, np.zeros(n_seq * seq_len, dtype=np.int32), tokens[:, 1:].reshape(-1), la.reshape(-1), lb.reshape(-1))
        for (grouping, g), truth in truths.items():
            stats = estimate(acc.groups[grouping][0])
            covered[grouping, g] += stats["low"][g] <= truth <= stats["high"][g]
        delta = (lb.astype(np.float64) - la)[WORD_START[tokens[:, 1:]]]
        half = 1.96 * delta.std(ddof=1) / math.sqrt(delta.size)  # tokens as if independent
        naive_covered += abs(delta.mean() - word_start_delta) <= half
    return {k: v / draws for k, v in covered.items()}, naive_covered / draws


@pytest.mark.parametrize("word_start_delta", [-0.05, 0.0], ids=["injected", "noise-only"])
def test_intervals_cover_the_truth_at_the_nominal_rate(word_start_delta):
    rates, naive = coverage(word_start_delta)
    # 200 draws at 95%: mean 190 covered, sd 3.1; [180, 198] is about +-3 sd
    for group, rate in rates.items():
        assert 0.90 <= rate <= 0.99, (group, rate)
    # the check can fail: treating a sequence's tokens as independent undercovers badly here
    assert naive < 0.85


def test_injected_difference_is_recovered(result):
    table = paired.group_table(result, "word_start")
    word_start = table.filter(pl.col("word_start")).row(0, named=True)
    sub_word = table.filter(~pl.col("word_start")).row(0, named=True)
    assert word_start["low"] <= -0.3 <= word_start["high"]
    assert word_start["high"] < -0.2
    # sub-word: zero, except id 5 (-0.5 on its share of sub-word tokens)
    share_5 = sub_word_share(result, 5)
    assert sub_word["low"] <= -0.5 * share_5 <= sub_word["high"]


def sub_word_share(result, token_id):
    sums = paired.TokenSums.merged(list(result.tokens.values()))
    sub_word = sums.n[~WORD_START].sum()
    return sums.n[token_id] / sub_word


# --- the pass over real part files -----------------------------------------------------------------


@pytest.mark.parametrize("grouping", paired.GROUPINGS)
def test_pair_runs_matches_loops_over_the_arrays(ws, result, grouping):
    expected = reference_estimate(reference_rows(ws), KEYS[grouping])
    check_table(paired.group_table(result, grouping), expected, KEY_COLUMN[grouping])


def test_per_segment_tables_and_pooling(ws, result):
    rows = reference_rows(ws)
    assert result.segments == [0, 1, 2, 3, 4, 5] and result.steps[5] == [10, 11]
    per_segment = paired.group_table(result, "bucket", per_segment=True)
    for segment in (0, 5):
        expected = reference_estimate([r for r in rows if r[1] == segment], KEYS["bucket"])
        check_table(per_segment.filter(pl.col("segment") == segment), expected, "bucket")
    pooled = paired.group_table(result, "word_start", segments=[4, 5])
    check_table(pooled, reference_estimate([r for r in rows if r[1] >= 4], KEYS["word_start"]), "word_start")
    with pytest.raises(ValueError, match="segment.s. 9 not paired"):
        paired.group_table(result, "bucket", segments=[9])


def test_sql_macro_returns_the_paired_rows(ws, con):
    got = con.sql("SELECT step, segment, seq, position, token_id, loss_a, loss_b, delta FROM paired('a', 'b') "
                  "ORDER BY step, seq, position").fetchall()
    expected = sorted(reference_rows(ws), key=lambda r: (r[0], r[2], r[3]))
    assert [g[:7] for g in got] == [tuple(e) for e in expected]
    assert all(g[7] == pytest.approx(g[6] - g[5], abs=0) for g in got)
    one = con.sql("SELECT count(*), min(segment), max(segment) FROM paired('a', 'b', segments := [3])").fetchall()
    assert one == [(2 * BATCH * SEQ_LEN, 3, 3)]
    # a LIMIT must not stop the check from seeing every step
    assert len(con.sql("SELECT * FROM paired('a', 'b') LIMIT 3").fetchall()) == 3


@pytest.mark.parametrize(
    "run_b, fragments",
    [
        ("shuffled", ["data order differs", "order.npy"]),
        ("shuffled-bare", ["data order differs", "step 0"]),
        ("other-data", ["different data sets", "ffffffffffff"]),
        ("big-batch", ["steps do not line up", "64 tokens per step, big-batch 128"]),
        ("big-batch-bare", ["steps do not line up", "step 0"]),
        ("no-sha", ["no dataset_sha256"]),
        ("a", ["with itself"]),
        ("ghost", ["unknown run 'ghost'", "known runs: a, a2"]),
    ],
)
def test_refusals(con, run_b, fragments):
    with pytest.raises(PairingError) as error:
        paired.pair_runs(con, "a", run_b)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    "run_b, fragment",
    [
        ("shuffled", "their data order differs (order_sha256"),  # same length, different order
        ("shuffled-bare", "at step 0 they did not train the same"),
        ("other-data", "different data sets"),
        ("big-batch", "steps do not line up (64 vs 128 tokens per step)"),
        ("big-batch-bare", "did not train the same (seq, position) rows"),
        ("no-sha", "no dataset_sha256"),
        ("ghost", "unknown run ghost"),
    ],
)
def test_sql_macro_refusals(con, run_b, fragment):
    with pytest.raises(duckdb.Error, match="paired: ") as error:
        con.sql(f"SELECT count(*) FROM paired('a', '{run_b}')").fetchall()
    assert fragment in str(error.value)


def test_shorter_run_pairs_the_common_steps(ws, con):
    short = paired.pair_runs(con, "a", "short")
    assert short.rows == 6 * BATCH * SEQ_LEN and short.segments == [0, 1, 2]
    assert any("a has 384 rows past the last paired step" in note for note in short.notes)
    expected = reference_estimate(reference_rows(ws, steps=6), KEYS["segment"])
    check_table(paired.group_table(short, "segment"), expected, "segment")
    assert con.sql("SELECT count(*) FROM paired('a', 'short')").fetchall() == [(6 * BATCH * SEQ_LEN,)]


def row_stream(rows: Rows, sizes):
    start = 0
    for size in sizes:
        yield rows[start:start + size]
        start += size


def test_aligned_pairs_cut_anywhere_yield_whole_sequences():
    n, t = 40, 4  # ten sequences of four positions
    rows = Rows(0, step=np.repeat(np.arange(5), 8).astype(np.int32), seq=np.repeat(np.arange(10), 4),
                position=np.tile(np.arange(t), 10).astype(np.int16), loss=np.arange(n, dtype=np.float32))
    pieces = list(paired.aligned_pairs(row_stream(rows, [5, 7, 20, 8]), row_stream(rows, [13, 1, 26]), "x", "y", t))
    assert all(len(a) % t == 0 and len(a) == len(b) for a, b in pieces)
    assert np.concatenate([a.loss for a, _ in pieces]).tolist() == rows.loss.tolist()
    bad = Rows(0, step=rows.step, seq=rows.seq, position=rows.position[::-1].copy(), loss=rows.loss)
    with pytest.raises(PairingError, match="not whole sequences"):
        list(paired.aligned_pairs(iter([bad]), iter([bad]), "x", "y", t))
    cut = rows[:38]  # ends inside a sequence
    with pytest.raises(PairingError, match="end inside a sequence"):
        list(paired.aligned_pairs(iter([cut]), iter([cut]), "x", "y", t))


# --- where did it help, the noise floor ----------------------------------------------------------


def test_token_table_finds_the_improved_id(ws, result):
    tokens = paired.token_table(result, min_count=20, k=3)
    top = tokens.filter(pl.col("direction") == "improved").row(0, named=True)
    assert top["token_id"] == 5 and top["text"] == "'s5'"
    targets, order = ws["tokens"][:, 1:], ws["order"]
    delta = (ws["b"].astype(np.float64) - ws["a"])[order][targets[order] == 5]
    assert top["n"] == delta.size and top["mean_delta"] == pytest.approx(delta.mean(), abs=1e-12)
    assert top["se_iid"] == pytest.approx(delta.std(ddof=1) / math.sqrt(delta.size), rel=1e-9)
    assert tokens.filter(pl.col("n") < 20).height == 0
    assert set(tokens["direction"]) <= {"improved", "regressed"}


def test_contexts_show_the_tokens_before_the_target(ws, con, result):
    contexts = paired.token_contexts(con, result, [5], "improved", per_token=2, context_tokens=3)
    assert contexts.height == 2 and contexts["token_id"].to_list() == [5, 5]
    last_steps = set(range(10, 12))
    for row in contexts.iter_rows(named=True):
        assert row["step"] in last_steps  # the last paired segment by default
        seq, pos = row["seq"], row["position"]
        assert row["delta"] == pytest.approx(float(ws["b"][seq, pos]) - float(ws["a"][seq, pos]))
        before = ws["tokens"][seq, max(1, pos - 2): pos + 1]  # targets before this one (from the loss table)
        text = "".join((" w" if WORD_START[t] else "s") + str(t) for t in before)
        assert row["context"] == f"{text}⟦s5⟧"
    # the two most improved occurrences of id 5 in the last segment
    candidates = sorted(float(ws["b"][s, p]) - float(ws["a"][s, p]) for s in ws["order"][40:] for p in range(SEQ_LEN)
                        if ws["tokens"][s, p + 1] == 5)
    assert sorted(contexts["delta"].to_list()) == pytest.approx(candidates[:2])


def test_summary_puts_the_noise_floor_beside(con, result):
    noise = paired.pair_runs(con, "a", "a2")
    table = paired.summary_table(result, noise)
    assert table["group"].to_list()[:2] == ["all tokens", "segment 0 (steps 0-1)"]
    assert table["group"].to_list()[-2:] == ["sub-word", "word start"]
    row = table.filter(pl.col("group") == "word start").row(0, named=True)
    noise_ws = paired.group_table(noise, "word_start").filter(pl.col("word_start")).row(0, named=True)
    assert row["noise_delta"] == pytest.approx(noise_ws["mean_delta"])
    assert abs(row["noise_delta"]) < 0.05 < abs(row["mean_delta"])


def test_parse_noise():
    assert paired.parse_noise("a", None) is None
    assert paired.parse_noise("a", "a2") == ("a", "a2")
    assert paired.parse_noise("a", "x, y") == ("x", "y")
    with pytest.raises(ValueError, match="one run"):
        paired.parse_noise("a", "x,y,z")


def test_pair_report_and_charts(con):
    report = paired.pair_report(con, "a", "b", noise="a2", min_count=20, k=2, examples=1)
    assert set(report.by_position["kind"]) == {"pair", "noise"}
    assert report.contexts.height >= 1
    chart = paired_charts.paired_chart(report)
    spec = chart.to_dict()
    assert "vconcat" in spec or "hconcat" in spec
    for df in (report.by_position, report.by_bucket, report.by_segment):
        assert df["low"].le(df["mean_delta"]).all() and df["mean_delta"].le(df["high"]).all()


# --- the command line --------------------------------------------------------------------------------

runner = CliRunner()


def invoke(ws, *args):
    from cli import app

    return runner.invoke(app, [*args, "--home", str(ws["home"])])


def test_cli_compare_pair_prints_the_summary(ws):
    result = invoke(ws, "compare-pair", "a", "b", "--noise", "a2", "--min-count", "20")
    assert result.exit_code == 0, result.output
    for fragment in ("all tokens", "word start", "noise", "improved", "'s5'"):
        assert fragment in result.output


def test_cli_plot_paired_writes_html(ws, tmp_path):
    out = tmp_path / "paired.html"
    result = invoke(ws, "plot", "paired", "a", "b", "--noise", "a2", "--out", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "vegaEmbed" in page and "noise: a \\u2192 a2" in page  # JSON escapes the arrow
    out2 = tmp_path / "p2.html"
    assert invoke(ws, "plot", "paired", "--runs", "a,b", "--out", str(out2)).exit_code == 0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["compare-pair", "a", "shuffled-bare"], "data order differs"),
        (["compare-pair", "a", "b", "--noise", "big-batch"], "steps do not line up"),
        (["plot", "paired", "a"], "two runs"),
        (["plot", "paired", "a", "other-data", "--out", "x.html"], "different data sets"),
    ],
)
def test_cli_errors_are_one_line(ws, args, fragment):
    result = invoke(ws, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


# --- the HTML report -----------------------------------------------------------------------------------


def test_report_with_a_pair_draws_every_chart(ws, con, tmp_path):
    from analysis.report import build_report
    from test_report_browser import CHROMIUM, assert_every_chart_draws, render

    out = build_report(con, ["a", "b"], "a", tmp_path / "report.html", pair=["a", "b"], noise="a2")
    page = out.read_text()
    assert "Paired comparison: a → b" in page and "noise Δ [95% CI]" in page and "⟦" in page
    plain = build_report(con, ["a", "b"], "a", tmp_path / "plain.html").read_text()
    n_charts = page.count('<div class="chart"')
    assert n_charts == plain.count('<div class="chart"') + 4 and "Paired comparison" not in plain
    with pytest.raises(PairingError, match="data order differs"):
        build_report(con, ["a"], "a", tmp_path / "x.html", pair=["a", "shuffled-bare"])
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: the page was built but not rendered")
    assert_every_chart_draws(render(out), n_charts)


def test_lossdb_synthetic_runs_without_a_vocabulary(tmp_path):
    from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace

    ws = make_workspace(tmp_path, [SyntheticDataset()], [SyntheticRun("base"), SyntheticRun("better", quality=0.9)])
    (tmp_path / "data" / "synth" / "vocab.parquet").unlink()
    report = paired.pair_report(lossdb.connect(tmp_path), "base", "better", min_count=5, examples=1)
    a, b = ws.runs["base"], ws.runs["better"]
    assert report.summary["group"].to_list()[0] == "all tokens" and report.summary.height == 5  # no word starts
    assert report.summary["mean_delta"][0] == pytest.approx((b.loss.astype(np.float64) - a.loss).mean())
    assert report.by_bucket.height == 0 and report.by_word_start.height == 0
    assert report.tokens["text"][0].startswith("'<")  # no vocabulary: ids shown as <id>
    assert "vconcat" in paired_charts.paired_chart(report).to_dict()
