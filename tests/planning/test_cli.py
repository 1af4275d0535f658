"""`mttt plan` end to end: one layout, a search, and bad input."""

from dataclasses import replace

import pytest

from megatron_ttt.cli import main
from megatron_ttt.config.model import resolve_model
from megatron_ttt.config.sections import ModelSection
from megatron_ttt.models.presets import parameter_count, preset
from megatron_ttt.planning import comm
from megatron_ttt.planning.hardware import GPUS, Assumptions
from megatron_ttt.planning.layout import Layout
from megatron_ttt.planning.search import plan, search


def test_one_layout_prints_every_part(capsys):
    assert main(["plan", "--preset", "7b", "--nodes", "4", "--gpus-per-node", "8", "--tp", "8", "--zero", "1",
                 "--micro-batch", "1", "--time-checkpoint-group", "4", "--block-ckpt", "off", "--seq-len", "2048"]) == 0
    out = capsys.readouterr().out
    for part in ("optimizer states (ZeRO 1)", "TTT activations (time-axis G=4)", "fits", "dual form",
                 "tp all gather", "dp reduce scatter", "MFU", "matmul_efficiency=0.6"):
        assert part in out, part


def test_search_returns_fitting_layouts_fastest_first():
    model, gpu = preset("7b"), GPUS["a100-80gb"]
    base = Layout(4, 8, seq_len=32768, global_batch_tokens=4 * 2**20)
    open_options = {"tp", "zero", "time_checkpoint_group", "micro_batch", "block_ckpt"}
    plans = search(model, base, open_options, gpu, Assumptions())
    assert plans and all(p.memory.fits(gpu) for p in plans)
    speeds = [p.estimate.tokens_per_s for p in plans]
    assert speeds == sorted(speeds, reverse=True)


def test_time_axis_checkpointing_shrinks_only_the_ttt_share():
    model, gpu = preset("7b", "mlp"), GPUS["a100-80gb"]
    off = plan(model, Layout(1, 8, tp=8, seq_len=8192, global_batch_tokens=8192), gpu, Assumptions()).memory
    layout = Layout(1, 8, tp=8, seq_len=8192, global_batch_tokens=8192, time_checkpoint_group=4)
    on = plan(model, layout, gpu, Assumptions()).memory
    assert on.ttt_activations < off.ttt_activations / 4
    assert on.block_activations == off.block_activations and on.parameters == off.parameters


def test_a_hybrid_plan_counts_its_attention(capsys):
    assert main(["plan", "--preset", "125m", "--layer-pattern", "TW" * 6, "--attention-window", "1024",
                 "--num-kv-heads", "4", "--nodes", "1", "--tp", "1", "--zero", "1", "--micro-batch", "1",
                 "--time-checkpoint-group", "0", "--block-ckpt", "off", "--seq-len", "8192",
                 "--global-batch-tokens", "65536"]) == 0
    out = capsys.readouterr().out
    for part in ("layer pattern TWTWTWTWTWTW", "attention (12 layers)", "seq 8192", "fits"):
        assert part in out, part


def test_a_lact_plan_counts_its_fast_weights(capsys):
    """LaCT's 760M shape (24 attention heads, 4 fast-weight heads) at 32k tokens over 2 CP ranks:
    the backbone follows the layer type, the fast weights and their state are in the report."""
    assert main(["plan", "--preset", "760m", "--layer-type", "lact", "--num-heads", "24", "--lact-chunk-size", "2048",
                 "--attention-window", "2048", "--nodes", "1", "--tp", "2", "--cp", "2", "--zero", "1",
                 "--micro-batch", "1", "--time-checkpoint-group", "4", "--block-ckpt", "off", "--seq-len", "32768",
                 "--global-batch-tokens", "131072"]) == 0
    out = capsys.readouterr().out
    for part in ("lact transformer model", "24 heads of 64", "fast weights (24 layers)",
                 "one layer's state: [B*Hf,h,d] fp32 x 6", "cp all to all", "fits"):
        assert part in out, part


def test_a_lact_preset_is_its_model(capsys):
    """--preset 760m-lact alone is LaCT's 760M config, untied head and all, as a pretraining config
    with model.preset=760m-lact resolves it."""
    assert main(["plan", "--preset", "760m-lact", "--nodes", "1", "--seq-len", "32768"]) == 0
    out = capsys.readouterr().out
    assert "lact transformer model (24 layers, D 1536, 24 heads of 64, FFN 4096" in out
    model = resolve_model(ModelSection(preset="760m-lact", layer_type="lact"), 32000)
    assert not model.tie_word_embeddings and f"{parameter_count(model):,} parameters" in out


def test_a_lact_model_directory_plans_as_its_flags_do(tmp_path, capsys):
    """--model reads a LaCT model_config.json; the report is the one the same flags give."""
    import json

    layout = ["--nodes", "1", "--tp", "2", "--cp", "1", "--zero", "1", "--micro-batch", "1",
              "--time-checkpoint-group", "2", "--block-ckpt", "off", "--seq-len", "8192", "--global-batch-tokens", "65536"]
    flags = ["--preset", "125m", "--layer-type", "lact", "--lact-heads", "2", "--lact-chunk-size", "1024"]
    assert main(["plan", *flags, *layout]) == 0
    from_flags = capsys.readouterr().out
    model = replace(preset("125m", "linear", "transformer"), layer_type="lact", lact_heads=2, lact_chunk_size=1024)
    (tmp_path / "model_config.json").write_text(json.dumps(model.to_dict()))
    assert main(["plan", "--model", str(tmp_path), *layout]) == 0
    assert capsys.readouterr().out == from_flags
    assert main(["plan", "--model", str(tmp_path), "--layer-type", "lact", *layout]) == 2
    assert "leave out --layer-type" in capsys.readouterr().err


def test_context_parallel_splits_the_activations_and_adds_its_all_to_alls():
    model, gpu = preset("7b"), GPUS["a100-80gb"]
    layout = Layout(2, 8, seq_len=32768, global_batch_tokens=2**20, time_checkpoint_group=16, zero=1)
    one, two = plan(model, layout, gpu, Assumptions()), plan(model, replace(layout, cp=2), gpu, Assumptions())
    for term in ("block_activations", "ttt_activations", "head_activations"):
        assert getattr(two.memory, term) == pytest.approx(getattr(one.memory, term) / 2), term
    # ZeRO partitions over DP x CP: 16 ranks either way.
    assert two.memory.optimizer == one.memory.optimizer and two.memory.parameters == one.memory.parameters
    assert comm.traffic(model, one.layout).cp == 0 < comm.traffic(model, two.layout).cp
    assert two.estimate.cp_comm_s > 0 and one.estimate.cp_comm_s == 0


def test_key_value_heads_that_do_not_split_over_cp_are_repeated():
    model = preset("7b-hybrid")  # 8 key/value heads: 1 per rank at TP 8
    d, D = model.head_dim, model.hidden_size
    assert comm.moved_width(model, "attention", Layout(2, 8, tp=8, cp=2)) == (D + 2 * d * 8 * 2 + D) / 8
    assert comm.moved_width(model, "attention", Layout(2, 8, tp=4, cp=2)) == (D + 2 * d * 8 + D) / 4


def test_a_128k_plan_needs_context_parallelism_or_block_checkpointing(capsys):
    args = ["plan", "--preset", "7b", "--nodes", "8", "--seq-len", "131072", "--global-batch-tokens", "4194304"]
    assert main([*args, "--cp", "1", "--block-ckpt", "off"]) == 2
    assert "no layout of 8 x 8 a100-80gb fits" in capsys.readouterr().err
    assert main([*args, "--cp", "2", "--tp", "1", "--zero", "2", "--micro-batch", "1", "--time-checkpoint-group", "16",
                 "--block-ckpt", "on"]) == 0
    out = capsys.readouterr().out
    for part in ("TP 1 x CP 2 x DP 32", "cp all to all", "+ CP comm", "fits"):
        assert part in out, part


@pytest.mark.parametrize("args, message", [
    (["--tp", "3"], "--tp 3 does not divide"),
    (["--tp", "2", "--cp", "3"], "--tp 2 x --cp 3 does not divide the 8 GPUs"),
    (["--preset", "tiny", "--tp", "1", "--cp", "8"], "--tp 1 x --cp 8 does not divide the 4 heads"),
    (["--tp", "1", "--cp", "2", "--seq-len", "2049"], "--seq-len 2049 does not split over --cp 2"),
    (["--tp", "1", "--cp", "0"], "--cp 0 must be >= 1"),
    (["--preset", "7b-hybrid", "--tp", "16", "--nodes", "2"], "--tp 16 does not divide the 8 key/value heads"),
    (["--assume", "warp_speed=2"], "--assume 'warp_speed=2'"),
    (["--global-batch-tokens", "1000", "--tp", "1", "--micro-batch", "1"], "--global-batch-tokens 1000"),
    (["--seq-len", "0", "--tp", "1"], "--seq-len 0 must be >= 1"),
    (["--preset", "tiny", "--layer-pattern", "T"], "--layer-pattern 'T' has 1 symbols for 2 layers"),
    (["--layer-type", "lact", "--backbone", "mamba"], "--backbone must be transformer, not 'mamba'"),
    (["--layer-type", "lact", "--lact-heads", "3"], "--lact-heads 3 must divide --hidden-size 4096"),
    (["--layer-type", "lact", "--tp", "8"], "--tp 8 x --cp 1 does not divide the 4 fast-weight heads"),
    (["--preset", "125m-lact", "--layer-type", "mlp"], "--preset 125m-lact is a LaCT model: leave out --layer-type"),
])
def test_bad_input_is_named(capsys, args, message):
    assert main(["plan", "--nodes", "1", *args]) == 2
    assert message in capsys.readouterr().err
