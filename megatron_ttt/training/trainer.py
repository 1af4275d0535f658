"""The pretraining loop: build everything from a PretrainConfig, train, checkpoint, resume."""

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from megatron.core.process_groups_config import ProcessGroupCollection

from megatron_ttt.checkpoint.model_dir import load_weights
from megatron_ttt.checkpoint.run_dir import latest_tag
from megatron_ttt.config import PretrainConfig, to_dict
from megatron_ttt.config.loading import check_world_size
from megatron_ttt.config.model import trained_model
from megatron_ttt.data import DataError, Manifest
from megatron_ttt.data.loader import LoaderConfig, TokenLoader
from megatron_ttt.data_prep.corpus import default_cache_dir
from megatron_ttt.models.build import build_model
from megatron_ttt.models.compile import compile_blocks, compile_seconds
from megatron_ttt.models.presets import parameter_count
from megatron_ttt.parallel.setup import parallel_groups
from megatron_ttt.training import checkpointing, zero_state
from megatron_ttt.training.adam_history import replay_bias_correction
from megatron_ttt.training.data import TrainingData, eod_mask_id, training_data
from megatron_ttt.training.engine import build_engine, gradient_accumulation
from megatron_ttt.training.init_from import InitPlan, initialize, plan_init, record
from megatron_ttt.training.loss import SourceLosses, eod_mask, token_mean
from megatron_ttt.training.muon import Muon
from megatron_ttt.training.report import Reporter
from megatron_ttt.training.schedule import inner_lr_scale, learning_rate, saved_schedule, schedule_change
from megatron_ttt.training.signals import EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_PREEMPTED, StopRequests


@dataclass
class Run:
    config: PretrainConfig
    groups: ProcessGroupCollection
    """The process groups the model and the data are split over (parallel/setup.py)."""
    run_dir: Path
    engine: object
    loader: TokenLoader
    val_loaders: dict[str, TokenLoader]
    """Each source's held-out split (those with a micro-batch per data-parallel rank)."""
    accumulation: int
    sources: TrainingData
    plan: checkpointing.ResumePlan | None = None
    """The checkpoint to continue from (chosen before the model is built: it fixes the vocabulary
    and, at another layout, the weights DeepSpeed starts from)."""
    init: InitPlan | None = None
    """The weights a run without a checkpoint of its own starts from (train.init_from)."""
    masked_token: int | None = None
    """The input token whose predictions the losses leave out (data.mask_eod_loss: the EOS)."""
    tokenizer: Path | None = None
    """The tokenizer model file the data was made with, copied into each checkpoint (None: not
    found here)."""
    step: int = 0
    muon: Muon | None = None
    """Muon's half of each optimizer step and its momentum (optimizer.name muon)."""


def build(config: PretrainConfig, groups: ProcessGroupCollection, cache: Path, resume_mode: str = "auto") -> Run:
    """resume_mode "auto": continue from the latest complete checkpoint if there is one; "none":
    start fresh (refused where checkpoints exist)."""
    run_dir = Path(config.run_dir)
    plan = checkpointing.plan_resume(run_dir, resume_mode, to_dict(config),
                                     checkpointing.current_layout(to_dict(config), groups))
    sources = training_data(config.data, cache)
    init = plan_init(config, plan, sources, dist.get_world_size(groups.tp))
    if dist.get_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        if init is not None:
            record(run_dir, init)
    masked_token = eod_mask_id(config.data, sources)
    # A resumed run's weights come from its checkpoint (here at another layout, else by DeepSpeed),
    # an initialized one's from its source: they are allocated only, never drawn first.
    vocab = plan.vocab_size if plan is not None else init and init.model.vocab_size
    model_config = trained_model(config, sources.tokenizer_vocab, sources.eos_id, vocab)
    model = build_model(model_config, groups, config.inner_loop(), sequence_parallel=config.parallel.sequence_parallel,
                        init_seed=None if plan is not None or init is not None else config.train.seed)
    if plan is not None and plan.reshard:
        load_weights(model, plan.path)
    elif init is not None:
        load_weights(model, init.path)
    model.block_checkpointing = config.parallel.block_checkpointing
    if config.train.compile:
        compile_blocks(model, config.train.compile_backend,
                       fullgraph=config.parallel.zero_stage < 3 and config.parallel.tensor_parallel == 1)
    dp_rank, dp_size = dist.get_rank(groups.dp), dist.get_world_size(groups.dp)
    cp = (dist.get_rank(groups.cp), dist.get_world_size(groups.cp))
    engine, _, muon = build_engine(model, config, dp_size)
    data = config.data
    train_config = LoaderConfig(data.micro_batch_size, seed=data.seed, num_workers=data.num_workers)
    loader = TokenLoader(sources.manifests, train_config, dp_rank, dp_size, sources.weights, cp)
    val_config = LoaderConfig(data.micro_batch_size, split="val", shuffle=False, num_workers=0)
    val_loaders = {name: TokenLoader(manifest, val_config, dp_rank, dp_size, context_parallel=cp)
                   for name, manifest in zip(sources.names, sources.manifests)
                   if config.logging.eval_interval and manifest.samples("val") >= data.micro_batch_size * dp_size}
    return Run(config, groups, run_dir, engine, loader, val_loaders, gradient_accumulation(config, dp_size), sources,
               plan, init, masked_token, tokenizer_file(sources.manifests[0]), muon=muon)


def tokenizer_file(manifest: Manifest) -> Path | None:
    """The tokenizer model file the manifest names, where it is found unchanged; otherwise None,
    with a note, on rank 0."""
    problem = manifest.tokenizer_problem()
    if problem is None:
        return Path(manifest.settings.tokenizer.path)
    if dist.get_rank() == 0:
        print(f"note: {manifest.directory} {problem}; checkpoints will not carry it (eval and generate then need "
              "--tokenizer)", file=sys.stderr, flush=True)
    return None


def resume(run: Run) -> None:
    """Continue from `run.plan`: DeepSpeed's files at the writing layout, the layout-free part
    (weights already in the module) at another. Without a plan: start, from `run.init` if set."""
    plan = run.plan
    if plan is None:
        if dist.get_rank() == 0:
            drop_metrics_after(run.run_dir / "metrics.jsonl", 0)  # left by a run that saved nothing
        if run.init is not None:
            initialize(run.engine, run.init, run.muon)
        return
    if plan.reshard:
        state = zero_state.load(run.engine, plan.path, run.muon)
    else:
        state = checkpointing.load(run.engine, run.run_dir, plan.tag)
        if run.muon is not None:
            run.muon.load_state_dict(state["muon"])
    replay_bias_correction(zero_state.base_optimizer(run.engine.optimizer), zero_state.adam_step(run.engine))
    try:
        run.loader.load_state_dict(state["loader"])
    except DataError:
        if not (differ := checkpointing.data_differences(plan.config, to_dict(run.config))):
            raise
        raise checkpointing.ResumeError(f"{plan.path} was trained on other data ({'; '.join(differ)}): its position in "
                                        "the data does not carry over. Resume with the checkpoint's data settings, or "
                                        "start another run_dir") from None
    run.step = state["step"]
    if dist.get_rank() == 0:
        drop_metrics_after(run.run_dir / "metrics.jsonl", run.step)
        how = " at another layout (weights, optimizer and loader position resharded)" if plan.reshard else ""
        print(f"resumed from {plan.path} at step {run.step}{how}", flush=True)
        if run.config.train.init_from:
            print(f"train.init_from={run.config.train.init_from} is not read: the run continues from its own "
                  "checkpoint", flush=True)
        if note := schedule_note(run, plan.config):
            print(note, flush=True)


def schedule_note(run: Run, saved: dict) -> str | None:
    """One line where the resumed run's schedule settings differ from the checkpoint's."""
    before = saved_schedule(saved["optimizer"])
    return schedule_change(before, saved["train"]["steps"], run.config.optimizer, run.config.train.steps, run.step)


def drop_metrics_after(metrics: Path, step: int) -> None:
    """Steps after the checkpoint are trained again: their old lines go."""
    if metrics.exists():
        keep = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= step]
        metrics.write_text("".join(line + "\n" for line in keep))


def average_over_data_parallel(value: float, groups: ProcessGroupCollection) -> float:
    """A per-rank mean over equal numbers of tokens, averaged over the data- and context-parallel
    ranks: the mean over every token of the step once."""
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=groups.dp_cp)
    return t.item() / dist.get_world_size(groups.dp_cp)


def set_schedules(run: Run) -> float:
    opt, total = run.config.optimizer, run.config.train.steps
    lr = learning_rate(opt, run.step, total)
    for group in run.engine.optimizer.param_groups:
        group["lr"] = lr
    model = run.engine.module
    model.set_inner_lr_scale(inner_lr_scale(opt, model.ttt.layer_type, model.ttt.ttt_base_lr, run.step, total))
    return lr


def gradient_norm(model: torch.nn.Module, tp_group: dist.ProcessGroup) -> float:
    """The global gradient norm with TP-split tensors counted on every TP rank and replicated ones
    once (what DeepSpeed's ZeRO optimizers report; its stage 0 computes it without keeping it)."""
    tp_rank = dist.get_rank(tp_group)
    squares = torch.zeros(1, dtype=torch.float64)
    for p in model.parameters():
        if p.grad is not None and (getattr(p, "tensor_model_parallel", False) or tp_rank == 0):
            squares += p.grad.double().pow(2).sum()
    dist.all_reduce(squares, group=tp_group)
    return squares.sqrt().item()


def micro_batch_loss(run: Run, model, batch, per_source: SourceLosses | None = None) -> torch.Tensor:
    """This rank's loss of one micro-batch (training/loss.py): the mean per-token loss of `model`
    (the engine or its module), over the positions not masked by data.mask_eod_loss; its tokens'
    losses also go to `per_source`, where given."""
    per_token, mask = model(batch.tokens, batch.labels), eod_mask(batch.tokens, run.masked_token)
    if per_source is not None:
        per_source.add(per_token, mask, batch.sources)
    return token_mean(per_token, mask, run.groups.cp)


def train_step(run: Run, batches) -> tuple[float, float, dict[str, float]]:
    """One optimizer step (accumulation micro-batches): the loss averaged over them and DP, the
    gradient norm before clipping, and for a blend each source's loss (train_loss_<source>).
    Under CP each rank's loss is the mean over its T/CP tokens, which is CP times its share of
    the sample's mean: DeepSpeed's average over DP x CP then gives the gradient of the mean over
    every token (megatron-core scales its CP loss the same way).
    With data.mask_eod_loss each micro-batch's loss is the mean over its unmasked tokens, split
    over CP the same way (training/loss.py)."""
    total, norm = 0.0, None
    names = run.sources.names
    per_source = SourceLosses(len(names)) if len(names) > 1 else None
    for micro in range(run.accumulation):
        batch = next(batches)
        loss = micro_batch_loss(run, run.engine, batch, per_source)
        finite = torch.tensor([float(torch.isfinite(loss))])
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite.item():
            raise FloatingPointError(f"step {run.step + 1}: the loss is {loss.item()} on some rank; stopping "
                                     "without a checkpoint (lower the lr, or resume from the last checkpoint)")
        run.engine.backward(loss)
        if micro == run.accumulation - 1 and run.muon is not None:
            norm = run.muon.prepare(run.engine.optimizer)
        elif micro == run.accumulation - 1 and run.config.parallel.zero_stage == 0:
            norm = gradient_norm(run.engine.module, run.groups.tp)
        run.engine.step()
        total += loss.item()
    if norm is None:
        norm = float(run.engine.get_global_grad_norm())
    sources = {} if per_source is None else {f"train_loss_{name}": loss for name, loss in
                                             zip(names, per_source.means(run.groups.dp_cp)) if loss is not None}
    return average_over_data_parallel(total / run.accumulation, run.groups), norm, sources


@torch.no_grad()
def held_out_loss(run: Run, loader: TokenLoader) -> float:
    """Mean loss over the first eval_batches micro-batches of one source's val split (each
    micro-batch's loss as training computes it, so with data.mask_eod_loss without the EOS
    positions)."""
    model = run.engine.module
    model.eval()
    loader.consumed_samples = 0  # the same held-out samples at every evaluation
    batches, losses = iter(loader), []
    for _ in range(min(run.config.logging.eval_batches, loader.samples_per_epoch //
                       (run.config.data.micro_batch_size * loader.dp_size))):
        batch = next(batches)
        losses.append(micro_batch_loss(run, model, batch).item())
    model.train()
    return average_over_data_parallel(sum(losses) / len(losses), run.groups)


def validation(run: Run) -> dict[str, float]:
    """val_loss: the sources' held-out losses weighted as the blend weighs them; per source too
    where there are several."""
    losses = {name: held_out_loss(run, loader) for name, loader in run.val_loaders.items()}
    weight = dict(zip(run.sources.names, run.sources.weights))
    values = {"val_loss": sum(weight[n] * loss for n, loss in losses.items()) / sum(weight[n] for n in losses)}
    if len(run.sources.names) > 1:
        values |= {f"val_loss_{name}": loss for name, loss in losses.items()}
    return values


def tokens_per_source(run: Run, consumed: np.ndarray) -> dict[str, int]:
    """Tokens each source has given the run, from the samples `consumed` of each (all ranks)."""
    return {f"tokens_{name}": int(n) * run.config.data.seq_len for name, n in zip(run.sources.names, consumed)}


def new_epochs(run: Run, before: np.ndarray, now: np.ndarray) -> list[str]:
    """A line for each source that ran out of samples between `before` and `now` (samples
    consumed of each) and began another epoch."""
    sizes = np.atleast_1d(run.loader.samples_per_epoch)
    epochs_before, epochs_now = before // sizes, now // sizes
    return [f"step {run.step}: {name} ran through its {sizes[i]:,} samples; epoch {epochs_now[i] + 1} begins "
            "(a new shuffle)" for i, name in enumerate(run.sources.names) if epochs_now[i] > epochs_before[i]]


def save(run: Run) -> Path:
    state = {"step": run.step, "loader": run.loader.state_dict(), "config": to_dict(run.config),
             "layout": checkpointing.current_layout(to_dict(run.config), run.groups)}
    if run.muon is not None:
        state["muon"] = run.muon.state_dict()
    return checkpointing.save(run.engine, run.run_dir, run.step, state, run.config.checkpoint.keep, run.tokenizer,
                              run.muon)


def train(run: Run) -> int:
    """Train to the configured step count; the exit status (0, or EXIT_PREEMPTED on a signal)."""
    config, rank0 = run.config, dist.get_rank() == 0
    reporter = Reporter(run.run_dir, rank0, config.logging.tensorboard, run.step)
    try:
        status = _loop(run, reporter)
    finally:
        plot = reporter.finish()
    if rank0 and plot is not None and status == 0:
        print(f"loss plot: {plot}", flush=True)
    return status


def _loop(run: Run, reporter: Reporter) -> int:
    config, rank0 = run.config, dist.get_rank() == 0
    stop, batches = StopRequests(), iter(run.loader)
    tokens_per_step = config.data.global_batch_tokens
    consumed = run.loader.per_source()
    compiling = config.train.compile
    while run.step < config.train.steps:
        start = time.perf_counter()
        lr = set_schedules(run)
        loss, norm, source_losses = train_step(run, batches)
        run.step += 1
        if compiling and rank0:
            print(f"compiled blocks: {compile_seconds():.1f} s compiling in the first step", flush=True)
        compiling = False
        values = {"train_loss": loss, "lr": lr, "grad_norm": norm,
                  "tokens_per_s": tokens_per_step / (time.perf_counter() - start)}
        if run.val_loaders and (run.step % config.logging.eval_interval == 0 or run.step == config.train.steps):
            values |= validation(run)
        before, consumed = consumed, run.loader.per_source()
        details = tokens_per_source(run, consumed) | source_losses if len(run.sources.names) > 1 else {}
        print_line = run.step % config.logging.interval == 0 or "val_loss" in values
        reporter.step(run.step, config.train.steps, values, print_line, details)
        if rank0:
            for line in new_epochs(run, before, consumed):
                print(line, flush=True)
        stopping = stop.agreed()
        if stopping or run.step % config.checkpoint.interval == 0 or run.step == config.train.steps:
            path = save(run)
            if rank0:
                print(f"saved {path}", flush=True)
        if stopping:
            if rank0:
                print(f"stopped by {stop.name()} after step {run.step} (saved); resume with --resume auto", flush=True)
            return EXIT_PREEMPTED
    return 0


def describe(run: Run) -> str:
    """One line on what was built: the model's size and the parallel layout it runs in."""
    model = run.engine.module
    tp, cp, dp = (dist.get_world_size(group) for group in (run.groups.tp, run.groups.cp, run.groups.dp))
    sp = " with sequence parallel" if model.config.sequence_parallel else ""
    return (f"model: {parameter_count(model.ttt):,} parameters; layout: TP {tp}{sp}, CP {cp}, DP {dp}, "
            f"ZeRO {run.config.parallel.zero_stage}, {run.config.train.dtype}")


def pretrain(config: PretrainConfig, resume_mode: str = "auto", cache: Path | None = None) -> int:
    # Also for callers of this function: config errors come before any process group exists.
    check_world_size(config, int(os.environ.get("WORLD_SIZE", 1)))
    cache = cache or default_cache_dir()
    with parallel_groups(config.layout(), seed=config.train.seed) as groups:
        run = build(config, groups, cache, resume_mode)
        if dist.get_rank() == 0:
            print(describe(run), flush=True)
        resume(run)
        try:
            return train(run)
        except FloatingPointError as exc:
            print(f"mttt pretrain: {exc}", flush=True)
            return EXIT_NONFINITE
        except KeyboardInterrupt:
            print(f"mttt pretrain: stopped at once by a second Ctrl-C after step {run.step}, without a checkpoint of "
                  f"it; --resume auto continues from the latest one ({latest_tag(run.run_dir)})", file=sys.stderr,
                  flush=True)
            return EXIT_INTERRUPTED
