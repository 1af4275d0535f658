"""docs/training.md "A campaign": a model of one's own shape trains, counts its parameters as the
closed form does, and plans; every schedule's learning rate is its formula, step by step and
across a resume."""

import math
import re
import shlex
from pathlib import Path

import pytest
import torch

from megatron_ttt.cli import main
from megatron_ttt.config import load_config
from megatron_ttt.config.model import resolve_model
from megatron_ttt.config.sections import OptimizerSection
from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.models.presets import parameter_count
from megatron_ttt.training.schedule import learning_rate, saved_schedule, schedule_change
from tests.training.runs import cut_at, final_weights, losses, metrics, pretrain

DOCS = Path(__file__).parents[2] / "docs" / "training.md"
TRAINING_VOCAB = 512
"""The tests' bundled tokenizer (tests/conftest.py), a multiple of 128: the padded vocabulary too."""


def documented(subsection: str, command: str) -> list[list[str]]:
    """The arguments after `mttt COMMAND` of each such line in a subsection of "A campaign"."""
    text = DOCS.read_text().split("## A campaign")[1].split(f"### {subsection}\n")[1].split("\n#")[0]
    return [shlex.split(line)[2:] for line in re.findall(rf"^mttt {command} .*$", text, re.M)]


def for_the_test(overrides: list[str]) -> list[str]:
    """A documented pretrain command's overrides with the run directory and length left to the test."""
    return [o for o in overrides if not o.startswith(("run_dir=", "train.steps="))]


def closed_form(cfg: TTTModelConfig) -> int:
    """TTT-Linear on the mamba backbone with tied embeddings, counted by hand (docs/training.md)."""
    D, H, F, L, V = cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    d, K, b = D // H, cfg.conv_kernel, cfg.mini_batch_size
    # in-proj q, v, gate + lr logits; out-proj; inner W, b; MLP; q/k convs + pre-conv; norms and biases
    per_layer = 3 * D * D + H * D + D * D + D * d + D + 3 * D * F + 3 * D * K + 10 * D + H + b
    return L * per_layer + V * D + D


def test_a_shape_of_ones_own_trains_resumes_bitwise_and_counts_its_parameters(tmp_path, cache):
    (shape,) = documented("Your own shape", "pretrain")
    (decay_branch,) = documented("Schedules (WSD and a decay branch)", "pretrain")[1:]
    # The documented shape with the decay branch's schedule: six steps from lr down to min_lr.
    overrides = for_the_test(shape) + for_the_test(decay_branch)
    assert "optimizer.schedule=wsd" in overrides and "optimizer.decay_fraction=1" in overrides
    whole = tmp_path / "whole"
    out = pretrain(whole, cache, overrides)
    model = resolve_model(load_config(None, overrides).model, TRAINING_VOCAB)
    assert (model.num_layers, model.hidden_size, model.num_heads, model.intermediate_size) == (3, 96, 4, 256)
    assert f"model: {closed_form(model):,} parameters" in out.stdout
    assert "note: the fused Triton TTT kernels cannot run this model's head dim" in out.stderr
    curve = losses(whole)
    assert sorted(curve) == list(range(1, 7)) and curve[6] < curve[1] - 0.3

    opt = OptimizerSection(schedule="wsd", warmup_fraction=0, decay_fraction=1)
    lr, floor = opt.lr, opt.min_lr
    # Step n of 6 decays from lr at step 1 to min_lr at step 6 as 1 - sqrt(p), p = (n - 1) / 5.
    expected = {n: floor + (lr - floor) * (1 - math.sqrt((n - 1) / 5)) for n in range(1, 7)}
    logged = {n: row["lr"] for n, row in metrics(whole).items()}
    assert logged.keys() == expected.keys()
    assert all(math.isclose(logged[n], expected[n], rel_tol=1e-12) for n in expected), (logged, expected)

    cut = cut_at(whole, tmp_path / "cut", 3)
    assert "at step 3" in pretrain(cut, cache, overrides).stdout
    assert trained(cut) == trained(whole)  # the learning rate, and so the losses, as if never stopped
    a, b = final_weights(whole), final_weights(cut)
    assert all(torch.equal(a[n], b[n]) for n in a if a[n] is not None), "final weights differ after resume"


def trained(run: Path) -> dict[int, tuple]:
    """Each step's logged learning rate and losses (not its timings)."""
    return {n: (row["lr"], row["train_loss"], row.get("val_loss")) for n, row in metrics(run).items()}


def test_the_planned_shape_counts_what_the_built_model_holds(groups, capsys):
    (plan,) = documented("Your own shape", "plan")
    (shape,) = documented("Your own shape", "pretrain")
    options = dict(zip(plan[::2], plan[1::2]))
    model = resolve_model(load_config(None, for_the_test(shape)).model, int(options["--vocab-size"]))
    built = TTTLanguageModel(megatron_config(model), model, groups)  # allocated only: shapes are what matter
    count = sum(p.numel() for p in built.parameters())
    assert count == closed_form(model) == parameter_count(model) == 543_228  # the count docs/training.md gives
    assert main(["plan", *plan]) == 0
    printed = capsys.readouterr().out
    assert f"(3 layers, D 96, 4 heads of 24, FFN 256, vocabulary 2048): {count:,} parameters" in printed


def _expected_lr(schedule: str, shape: str, step: int, total: int, opt: OptimizerSection) -> float:
    """The schedules written out: step n = step + 1 of total; warm-up W = round(warmup_fraction x total)."""
    warm = max(1, round(opt.warmup_fraction * total))
    if step < warm:
        return opt.lr * (step + 1) / warm
    start = {"constant": total, "wsd": total - round(opt.decay_fraction * total)}.get(schedule, warm)
    if step < start:
        return opt.lr
    p = (step - start) / (total - 1 - start)
    left = {"cosine": (1 + math.cos(math.pi * p)) / 2, "linear": 1 - p, "1-sqrt": 1 - math.sqrt(p)}[shape]
    return opt.min_lr + (opt.lr - opt.min_lr) * left


@pytest.mark.parametrize("schedule, shape", [("cosine", "cosine"), ("linear", "linear"), ("constant", None),
                                             ("wsd", "1-sqrt"), ("wsd", "linear"), ("wsd", "cosine")])
def test_each_schedule_is_its_formula_at_every_step(schedule, shape):
    total = 37  # warm-up round(3.7) = 4 steps; wsd: stable to step 26, decay over the last 11
    opt = OptimizerSection(lr=2e-3, min_lr=1e-4, warmup_fraction=0.1, schedule=schedule, decay_fraction=0.3,
                           **({"decay_shape": shape} if schedule == "wsd" else {}))
    got = [learning_rate(opt, step, total) for step in range(total)]
    want = [_expected_lr(schedule, shape, step, total, opt) for step in range(total)]
    assert all(math.isclose(g, w, rel_tol=1e-12) for g, w in zip(got, want)), list(zip(got, want))
    assert got[3] == opt.lr and got[-1] == pytest.approx(opt.lr if schedule == "constant" else opt.min_lr)
    if schedule == "wsd":
        assert got[4:26] == [opt.lr] * 22 and got[26] == pytest.approx(opt.lr) and got[27] < opt.lr


def test_the_documented_anneal_by_resume_decays_from_the_resumed_step():
    (main_run, _) = documented("Schedules (WSD and a decay branch)", "pretrain")
    stable = load_config(None, for_the_test(main_run)).optimizer  # a fifth of its steps decay
    now = OptimizerSection(schedule="wsd", decay_fraction=0.2)
    assert [learning_rate(now, step, 750) for step in (599, 600)] == [now.lr, now.lr]
    assert learning_rate(now, 601, 750) < now.lr and learning_rate(now, 749, 750) == pytest.approx(now.min_lr)
    line = schedule_change(stable, 1000, now, 750, 600)
    assert line == ("the schedule changed on resume (train.steps 1000 -> 750): from step 601 the learning rate is "
                    "0.003 (it would have been 0.003), warm-up ends at step 75, the decay to 1e-05 runs from step 601 "
                    "to step 750")


def test_a_checkpoint_from_before_the_schedules_trained_cosine():
    before = saved_schedule({"lr": 1e-3, "min_lr": 1e-5, "warmup_fraction": 0.1})
    line = schedule_change(before, 100, OptimizerSection(lr=1e-3, schedule="wsd"), 100, 50)
    assert line.startswith("the schedule changed on resume (optimizer.schedule cosine -> wsd): from step 51 the "
                           "learning rate is 0.001 (it would have been 0.000")
