"""The training loop: one pass over a data set, every trained token's loss recorded.

    result = train(cfg, home="workspace", run="baseline")          # a new run
    result = train(cfg, home="workspace", run="baseline", resume=True)

`train()` reads top to bottom: set up ranks and device, open the run folder (new or resumed),
resolve the config against the data set, build the model and optimizer, then loop. Each
optimizer step accumulates gradients over micro-batches, and its per-token losses go to the
host without a sync (train/hostcopy.py) and from there, one step later, to the loss writer.

Exactly once (every trained (seq, position) appears once in the loss table):
- the loss writer is flushed, on every rank, before every checkpoint, so no Parquet part spans
  a checkpoint and every step before a checkpoint is on disk when the checkpoint appears;
- a resume restores the newest checkpoint (after N steps) and deletes every part whose first
  step is >= N before writing again (`discard_after`), then trains from step N;
- Ctrl-C / SIGTERM finish the step in flight, flush, checkpoint and return (status stays
  `running`: the run continues with --resume);
- a non-finite loss stops the run before its step is recorded; steps before it stay written,
  and the newest checkpoint (always from before it: none is saved unchecked) stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from lossdb.schema import check_run_name
from lossdb.writer import LossWriter, discard_after
from train.batches import data_order, load_rows, rank_rows
from train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from train.config import RunConfig, load_config, to_toml
from train.dataset import open_dataset
from train.distributed import close_ranks, init_ranks
from train.hostcopy import DelayedHostCopy
from train.metrics import MetricsLog, Progress, flops_per_token, matmul_params, peak_flops
from train.model import build_model
from train.runinfo import command_line, device_name, git_commit, now, read_run_info, versions, write_run_info
from train.schedule import lr_at
from train.workspace import lossdb_dir, resolve_home, run_dir

# Settings that may differ between a run's saved config and a resume (they change neither the
# data order nor the math beyond floating-point noise).
RESUMABLE_KEYS = {("train", "device"), ("train", "compile"), ("train", "log_every"), ("train", "checkpoint_every")}
SEGMENTS_BY_DEFAULT = 10


class TrainError(Exception):
    """A problem with the run as asked for, phrased as one line for the command line."""


class NonFiniteLoss(TrainError):
    """Training hit a NaN or infinite loss; the message names the step."""


@dataclass(frozen=True)
class Plan:
    """What the config and data set make of a run, fixed at its first start."""

    total_steps: int
    tokens_per_step: int  # global batch × seq_len (one target per position)
    local_batch: int  # sequences per rank per step
    micro_batch: int
    accum_steps: int  # micro-batches per rank per step
    segment_tokens: int

    def segment(self, step: int) -> int:
        return step * self.tokens_per_step // self.segment_tokens


@dataclass(frozen=True)
class TrainResult:
    run: str
    status: str  # finished | stopped (Ctrl-C; continue with --resume)
    steps: int  # optimizer steps done
    total_steps: int
    tokens_trained: int
    folder: Path
    tokens_per_s: float


def run_config_path(home: str | Path | None, run: str) -> Path:
    """The resolved config a run saved (what --resume without --config loads)."""
    return run_dir(resolve_home(home), run) / "config.toml"


def train(cfg: RunConfig, *, home: str | Path | None = None, run: str | None = None, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train `cfg` as run `run` (default: the config's name) under `home`; see the module docstring."""
    home = resolve_home(home)
    run = run or cfg.name
    try:
        check_run_name(run)
    except ValueError as err:
        raise TrainError(str(err)) from None

    # --- ranks (torchrun) and device --------------------------------------------------------
    try:
        ranks, device = init_ranks(cfg.train.device)
    except (RuntimeError, ValueError) as err:  # e.g. train.device = "cuda" on a box without one
        raise TrainError(str(err)) from None
    try:
        return _train(cfg, home, run, resume, progress, ranks, device)
    finally:
        close_ranks(ranks)


def _train(cfg: RunConfig, home: Path, run: str, resume: bool, progress: bool, ranks, device) -> TrainResult:
    # --- precision and threads -----------------------------------------------------------------
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    elif "OMP_NUM_THREADS" not in os.environ:
        # share the cores between the ranks on this machine; torch's default may oversubscribe
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks.local_world_size))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.train.dtype == "bf16"
                else contextlib.nullcontext())

    # --- data set, resolved config, data order -------------------------------------------------
    folder = run_dir(home, run)
    losses_root = lossdb_dir(home)
    try:
        ds = open_dataset(home, cfg.data.dataset)
    except (FileNotFoundError, ValueError) as err:
        raise TrainError(str(err)) from None
    cfg, plan = resolve_config(cfg, ds, ranks.world_size)
    info = _check_resumable(folder, run, cfg, ds) if resume else _check_new(folder, run, losses_root)
    order = data_order(ds.n_sequences, plan.total_steps, cfg.train.batch_size, cfg.train.data_seed)
    if (folder / "order.npy").exists() and not np.array_equal(np.load(folder / "order.npy"), order):
        raise TrainError(f"--resume: {folder / 'order.npy'} differs from the order the seed gives now "
                         "(another numpy version?); the run cannot continue exactly")

    # --- model and optimizer ---------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    raw_model = build_model(cfg.model).to(device)
    counts = raw_model.parameter_counts()
    optimizer = make_optimizer(raw_model, cfg, fused=cuda)
    model = raw_model
    if cfg.train.compile and cuda:
        model = torch.compile(model)
    if ranks.distributed:
        model = DDP(model, device_ids=[device.index] if cuda else None)

    # --- run folder ------------------------------------------------------------------------------
    ranks.barrier()  # every rank has checked before rank 0 creates anything
    if ranks.is_main:
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not resume:  # a resume keeps the config the run started with
            (folder / "config.toml").write_text(to_toml(cfg))
        if not (folder / "order.npy").exists():
            np.save(folder / "order.npy", order)

    # --- where to start: step 0, or the newest checkpoint -------------------------------------
    start_step = 0
    found = latest_checkpoint(folder / "checkpoints") if resume else None
    if found is not None:
        state = load_checkpoint(found[1])
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_step = state["step"]
    if resume and ranks.is_main:
        # exactly once: rows recorded after the checkpoint are recorded again below
        discard_after(losses_root, run, start_step - 1)
    ranks.barrier()

    # --- run.json, metrics, loss recording -------------------------------------------------------
    tps = plan.tokens_per_step
    if ranks.is_main:
        info = _run_info(info, run, cfg, ds, counts, device, ranks, plan, start_step, order)
        write_run_info(folder, info)
    metrics = MetricsLog(folder / "metrics.jsonl", resume_step=start_step) if ranks.is_main else None
    writer = LossWriter(losses_root, run, rank=ranks.rank, rollups=cfg.lossdb.rollups) if cfg.lossdb.record else None
    copies = DelayedHostCopy(plan.local_batch, cfg.model.seq_len, n_stats=2, device=device, record=writer is not None)
    peak = peak_flops(torch.cuda.get_device_name(device)) if cuda else None
    flops_token = flops_per_token(matmul_params(raw_model), cfg.model.n_layer, cfg.model.d_model, cfg.model.seq_len)
    bar = Progress(plan.total_steps, start_step, enabled=progress and ranks.is_main)
    stop = _StopFlag()

    in_flight: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # step -> (rows, host tokens) until recorded
    # training time: the wall clock between steps' completions, with checkpoint saves taken out
    clock = {"train_s": 0.0, "window_s": 0.0, "window_steps": 0, "last": time.perf_counter()}
    recorded_steps = start_step  # steps 0..recorded_steps-1 are checked and handed to the loss writer

    def checkpoint(steps_done: int) -> None:
        """Flush every rank's losses, then save; the clock does not run meanwhile."""
        paused_at = time.perf_counter()
        if writer is not None:
            writer.flush()
        ranks.barrier()  # all ranks' rows before steps_done are on disk
        if ranks.is_main:
            save_checkpoint(folder / "checkpoints", steps_done, {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": steps_done,  # the schedule is a function of the step: lr_at(step, ...)
                "rng": rng_state(),
                "data": {"order_len": len(order), "position": steps_done * cfg.train.batch_size},
                "config": cfg.to_dict(),
            })
            info.update(steps=steps_done, tokens_trained=steps_done * tps, checkpoint_step=steps_done)
            write_run_info(folder, info)
        ranks.barrier()
        clock["last"] += time.perf_counter() - paused_at

    def record(taken) -> bool:
        """Check, record and log one step whose numbers reached the host; True = stop training."""
        nonlocal recorded_steps
        step, losses, (loss, grad_norm), done_at = taken
        # the table keeps float16: a loss past its range (65,504 nats) is as lost as a NaN
        finite = math.isfinite(float(loss)) and (losses is None or bool(np.isfinite(losses).all()))
        # one host all-reduce: do all ranks agree to go on, and the loss over all ranks' tokens
        bad_ranks, stop_ranks, loss_sum = ranks.sum([0.0 if finite else 1.0, float(stop.requested), float(loss)])
        if bad_ranks:
            raise NonFiniteLoss(f"non-finite training loss at step {step} (tokens {step * tps:,} to {(step + 1) * tps:,}; "
                                "NaN, or past float16's 65,504); nothing from that step on is recorded")
        rows, host = in_flight.pop(step)
        if writer is not None:
            writer.write(step, plan.segment(step), rows, host[:, 1:], losses)  # copies; returns at once
        recorded_steps = step + 1
        clock["window_s"] += done_at - clock["last"]
        clock["train_s"] += done_at - clock["last"]
        clock["last"] = done_at
        clock["window_steps"] += 1
        if ranks.is_main and ((step + 1) % cfg.train.log_every == 0 or step + 1 == plan.total_steps):
            tokens_per_s = clock["window_steps"] * tps / max(clock["window_s"], 1e-9)
            values = {
                "train/loss": loss_sum / ranks.world_size,  # every rank trains as many tokens
                "train/grad_norm": float(grad_norm),
                "train/lr": lr_at(step, plan.total_steps, cfg.optim),
                "train/tokens": (step + 1) * tps,
                "perf/tokens_per_s": tokens_per_s,
            }
            if peak:
                values["perf/mfu"] = tokens_per_s * flops_token / (peak * ranks.world_size)
            if writer is not None:  # blocked_s > 0 between checkpoints: the disk could not keep up
                values["lossdb/busy_s"] = writer.stats.busy_s
                values["lossdb/blocked_s"] = writer.stats.blocked_s
            metrics.log(values, step)
            bar.show(step, plan.total_steps, values)
            clock["window_s"], clock["window_steps"] = 0.0, 0
        return bool(stop_ranks)

    # --- the training loop ----------------------------------------------------------------------
    status, message = "running", None
    step = start_step
    try:
        with stop.installed():
            if found is None:
                checkpoint(0)  # a checkpoint from before any step: a failure always leaves one
            stopping = False
            while step < plan.total_steps and not stopping:
                rows = rank_rows(order, step, cfg.train.batch_size, ranks.rank, ranks.world_size)
                host, batch = load_rows(ds.tokens, rows, device)  # (b, T+1) host array, device tensor
                in_flight[step] = (rows, host)
                lr = lr_at(step, plan.total_steps, cfg.optim)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = None
                for micro in range(plan.accum_steps):
                    chunk = batch[micro * plan.micro_batch : (micro + 1) * plan.micro_batch]  # (mb, T+1)
                    sync = not ranks.distributed or micro == plan.accum_steps - 1
                    with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
                        logits, loss = model(chunk[:, :-1], chunk[:, 1:])  # loss (mb, T) float32
                    del logits  # (mb, T, V): free it before the next micro-batch's forward
                    loss_mean = loss.mean()  # what is optimized is the mean of what is recorded
                    (loss_mean / plan.accum_steps).backward()
                    copies.copy_losses(step, micro * plan.micro_batch, loss)
                    loss_sum = loss_mean.detach() if loss_sum is None else loss_sum + loss_mean.detach()
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optim.grad_clip or math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                copies.finish_step(step, torch.stack([loss_sum / plan.accum_steps, grad_norm]))
                step += 1
                bar.advance()

                # --- the previous step's numbers: on the host by now, read without a stall ---
                if len(copies) > 1:
                    stopping = record(copies.take())
                if stopping or step % (cfg.train.checkpoint_every or plan.total_steps) == 0 \
                        or step == plan.total_steps:
                    while len(copies):  # every step in a checkpoint is checked and recorded first
                        stopping = record(copies.take()) or stopping
                    checkpoint(step)
        status = "finished" if step == plan.total_steps else "running"
        if status == "running":
            message = f"stopped at step {step} of {plan.total_steps}; continue with --resume"
            bar.write(f"{message} (run {run!r})")
    except NonFiniteLoss as err:
        status, message = "failed", str(err)
        raise
    except Exception as err:
        status, message = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        bar.close()
        if writer is not None:
            # keep what was recorded; if a failure came from the writer itself, closing re-raises it
            with contextlib.suppress(Exception) if status == "failed" else contextlib.nullcontext():
                writer.close()
        if metrics is not None:
            metrics.close()
        trained_here = (step - start_step) * tps
        tokens_per_s = trained_here / clock["train_s"] if clock["train_s"] > 0 else 0.0
        if ranks.is_main and info is not None:
            info.update(status=status, message=message, tokens_per_s=round(tokens_per_s, 1))
            if status == "finished":
                info.update(finished_at=now(), steps=step, tokens_trained=step * tps)
            elif status == "failed":
                info.update(tokens_trained=recorded_steps * tps)  # what the loss table holds
            write_run_info(folder, info)
    return TrainResult(run=run, status="finished" if status == "finished" else "stopped", steps=step,
                       total_steps=plan.total_steps, tokens_trained=step * tps, folder=folder,
                       tokens_per_s=tokens_per_s)


# --- helpers ---------------------------------------------------------------------------------------


def resolve_config(cfg: RunConfig, ds, world_size: int) -> tuple[RunConfig, Plan]:
    """Fill in what the config leaves to the data set and the run's length; check they fit.

    seq_len and vocab_size 0 come from the data set, tokens 0 becomes one pass (whole global
    batches only), segment_tokens 0 a tenth of the run. The result is what config.toml records.
    """
    m, t = cfg.model, cfg.train
    name = f"data set {ds.path.name!r}"
    if m.seq_len and m.seq_len != ds.seq_len:
        raise TrainError(f"model.seq_len = {m.seq_len} but {name} has seq_len {ds.seq_len} "
                         "(set model.seq_len = 0 to take it from the data set)")
    if m.vocab_size and m.vocab_size < ds.vocab_size:
        raise TrainError(f"model.vocab_size = {m.vocab_size} is smaller than {name}'s vocabulary ({ds.vocab_size})")
    if t.batch_size % (world_size * t.micro_batch_size):
        raise TrainError(f"train.batch_size = {t.batch_size} is not a multiple of {world_size} ranks × "
                         f"train.micro_batch_size = {t.micro_batch_size}")
    tokens_per_step = t.batch_size * ds.seq_len
    max_steps = ds.n_sequences // t.batch_size
    steps = max_steps if t.tokens == 0 else t.tokens // tokens_per_step
    if t.tokens > max_steps * tokens_per_step:
        raise TrainError(f"train.tokens = {t.tokens:,} is more than one pass over {name} "
                         f"({max_steps * tokens_per_step:,} tokens in whole batches of {t.batch_size})")
    if steps < 1:
        raise TrainError(f"train.tokens = {t.tokens:,} is less than one optimizer step "
                         f"({t.batch_size} sequences × {ds.seq_len} = {tokens_per_step:,} tokens)")
    total = steps * tokens_per_step
    segment_tokens = cfg.lossdb.segment_tokens or math.ceil(total / SEGMENTS_BY_DEFAULT)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(m, seq_len=ds.seq_len, vocab_size=m.vocab_size or ds.vocab_size),
        train=dataclasses.replace(t, tokens=total),
        lossdb=dataclasses.replace(cfg.lossdb, segment_tokens=segment_tokens),
    )
    local = t.batch_size // world_size
    plan = Plan(total_steps=steps, tokens_per_step=tokens_per_step, local_batch=local,
                micro_batch=t.micro_batch_size, accum_steps=local // t.micro_batch_size,
                segment_tokens=segment_tokens)
    return cfg, plan


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms, biases or embedding tables)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in embeddings]
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                             **({"fused": True} if fused else {}))


def _check_new(folder: Path, run: str, losses_root: Path) -> None:
    """A new run needs a fresh name: no run folder and no loss rows under it."""
    info = read_run_info(folder)
    if info is not None and info.get("status") == "finished":
        raise TrainError(f"run {run!r} already finished ({folder}); it is never overwritten: choose another --run name")
    if folder.exists():
        state = f"status {info.get('status')}" if info else "not started yet"
        raise TrainError(f"run {run!r} already exists ({folder}, {state}): continue it with --resume, "
                         "or choose another --run name")
    existing = losses_root / "losses" / f"run={run}"
    if existing.exists():
        raise TrainError(f"the loss table already has rows for run {run!r} ({existing}) but there is no run folder: "
                         "delete them or choose another --run name")
    return None


def _check_resumable(folder: Path, run: str, cfg: RunConfig, ds) -> dict | None:
    """A resume continues the run's own config on the same data set; returns its run.json."""
    if not (folder / "config.toml").exists():
        raise TrainError(f"no run {run!r} to resume ({folder / 'config.toml'} does not exist); start it without --resume")
    info = read_run_info(folder)  # None if killed before its first run.json: it restarts at step 0
    if info is not None and info.get("status") == "finished":
        raise TrainError(f"run {run!r} already finished ({folder}); nothing to resume")
    saved = load_config(folder / "config.toml").to_dict()
    given = cfg.to_dict()
    for table, values in saved.items():
        for key, value in values.items():
            if (table, key) not in RESUMABLE_KEYS and given[table][key] != value:
                raise TrainError(f"--resume: {table}.{key} = {given[table][key]!r} but run {run!r} was started with "
                                 f"{value!r} ({folder / 'config.toml'}); resume with the run's own config")
    if info is not None and info.get("dataset_sha256") != ds.sha256:
        raise TrainError(f"--resume: data set {cfg.data.dataset!r} changed since run {run!r} started "
                         f"(sha256 now {ds.sha256[:12]}, run.json has {str(info.get('dataset_sha256'))[:12]})")
    return info


def _run_info(info: dict | None, run: str, cfg: RunConfig, ds, counts: dict, device, ranks, plan: Plan,
              start_step: int, order: np.ndarray) -> dict:
    """run.json's content at a (re)start: kept fields from before, the rest fresh."""
    info = dict(info or {})
    info.update(
        run=run,
        status="running",
        message=None,
        dataset=cfg.data.dataset,
        dataset_sha256=ds.sha256,
        seed=cfg.train.seed,
        tokens_trained=start_step * plan.tokens_per_step,
        steps=start_step,
        total_steps=plan.total_steps,
        tokens_per_step=plan.tokens_per_step,
        segment_tokens=plan.segment_tokens,
        order_sha256=hashlib.sha256(order.tobytes()).hexdigest(),  # equal orders: runs can be paired
        n_params=counts["total"],
        n_params_non_embedding=counts["non_embedding"],
        device=device_name(device),
        world_size=ranks.world_size,
        versions=versions(),
        **git_commit(),
        command=command_line(),
        tokens_per_s=info.get("tokens_per_s"),
        started_at=info.get("started_at") or now(),
        finished_at=None,
        resumed_at=(info.get("resumed_at") or []) + ([now()] if info.get("started_at") else []),
        config=cfg.to_dict(),
    )
    return info


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to stop after the step in flight; a second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    @contextlib.contextmanager
    def installed(self):
        try:
            previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: no signal handling
            previous = {}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
