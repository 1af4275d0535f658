"""`mttt convert llama-to-mttt`: tiny random Llama models saved by transformers score the same
through our model, hybrids keep Llama's attention layers, bad directories are refused."""

import io
import json
import re
import shlex
import shutil
from contextlib import contextmanager, redirect_stdout

import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import megatron_ttt.checkpoint.convert as convert
from megatron_ttt.checkpoint.checksums import weights_checksum
from megatron_ttt.checkpoint.llama import HybridLayout
from megatron_ttt.checkpoint.model_dir import load_model
from megatron_ttt.checkpoint.run_dir import read_model_config
from megatron_ttt.cli import main
from megatron_ttt.config import to_dict
from megatron_ttt.config.continuation import CONTINUE_FILE
from megatron_ttt.config.loading import check_world_size, load_config
from megatron_ttt.config.model import model_differences, trained_model
from megatron_ttt.data.loader import LoaderConfig, TokenLoader
from megatron_ttt.training.data import training_data
from megatron_ttt.training.trainer import build, resume, train_step
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from tests.training.runs import FAST, losses, pretrain

pytestmark = pytest.mark.usefixtures("single_process_parallel")

SIZES = dict(vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
             initializer_range=0.2, rms_norm_eps=1e-5)
TOKENS = torch.from_numpy(np.random.default_rng(0).integers(0, SIZES["vocab_size"], (3, 23)))


def llama_dir(path, seed=0, max_shard_size="1GB", **config):
    """A random Llama (norm gains random too, so their mapping shows) saved by transformers."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**(SIZES | config)))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return model.eval()


def hf_logprobs(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens).logits.float(), dim=-1)
    return logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """One GQA Llama with a sentencepiece tokenizer, its directory sharded: what the command-line
    and error tests start from."""
    path = tmp_path_factory.mktemp("llama") / "src"
    model = llama_dir(path, num_key_value_heads=2, max_shard_size="20KB")
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["the model learns at test time"] * 50 + ["a b c d"] * 50),
                                   model_writer=writer, vocab_size=12, model_type="word")
    (path / "tokenizer.model").write_bytes(writer.getvalue())
    return path, model


@pytest.mark.parametrize("kv_heads, tied, theta", [(4, True, 10000.0), (2, False, 5e5), (4, False, 5e5),
                                                   (2, True, 10000.0)])
def test_every_layer_attention_is_the_llama_model(tmp_path, groups, kv_heads, tied, theta):
    model = llama_dir(tmp_path / "src", num_key_value_heads=kv_heads, tie_word_embeddings=tied, rope_theta=theta)
    assert convert.llama_to_mttt(tmp_path / "src", tmp_path / "ours", groups) <= 1e-5
    ours = load_model(tmp_path / "ours", groups)
    assert ours.ttt.mixers == ("attention",) * 3 and ours.ttt.rope_theta == theta and ours.ttt.kv_heads == kv_heads
    torch.testing.assert_close(token_logprobs(ours, TOKENS), hf_logprobs(model), rtol=0, atol=1e-5)


def test_a_hybrid_keeps_llamas_attention_layers(tmp_path, groups, llama):
    src, hf = llama
    convert.llama_to_mttt(src, tmp_path / "ours", groups, HybridLayout("T*W", attention_window=64))
    ours = load_model(tmp_path / "ours", groups).eval()
    with torch.no_grad():
        inputs = hf(TOKENS, output_hidden_states=True).hidden_states
        positions = torch.arange(TOKENS.shape[1])[None]
        for i in (1, 2):  # the window (64) spans the sequence: W is full attention here
            rope = hf.model.rotary_emb(inputs[i], positions)
            want = hf.model.layers[i](inputs[i], position_ids=positions, position_embeddings=rope)
            got = ours.blocks[i](inputs[i].transpose(0, 1)).transpose(0, 1)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ttt, attention = ours.blocks[0].mixer, hf.model.layers[0].self_attn
    assert torch.equal(ttt.out_proj.weight, attention.o_proj.weight)
    v = ttt.columns.split(ttt.in_proj.weight.T, 1)["v"].T  # [H * d, D], a row block per TTT head
    kv_v = attention.v_proj.weight.reshape(2, 8, 32)
    assert torch.equal(v.reshape(4, 8, 32), kv_v.repeat_interleave(2, dim=0))  # TTT heads 0, 1 read kv head 0
    assert torch.equal(ours.blocks[0].mlp.fc2.weight, hf.model.layers[0].mlp.down_proj.weight)
    assert torch.isfinite(token_logprobs(ours, TOKENS)).all()


@contextmanager
def commands_own_process_group():
    """The commands set up (and tear down) their own process group: the module's steps aside."""
    destroy_parallel()
    try:
        yield
    finally:
        init_parallel(ParallelLayout())


def test_converted_by_the_command_scores_as_transformers_through_eval_logprobs(tmp_path, capsys, llama):
    src, hf = llama
    np.save(tmp_path / "ids.npy", TOKENS.numpy())
    with commands_own_process_group():
        assert main(["convert", "llama-to-mttt", str(src), str(tmp_path / "ours")]) == 0
        assert "self-check" in capsys.readouterr().out
        assert (tmp_path / "ours" / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()
        assert main(["eval", "logprobs", "--checkpoint", str(tmp_path / "ours"), "--input", str(tmp_path / "ids.npy"),
                     "--output", str(tmp_path / "lp.npy")]) == 0
        np.testing.assert_allclose(np.load(tmp_path / "lp.npy"), hf_logprobs(hf).numpy(), rtol=0, atol=1e-5)
    plan = ["plan", "--model", str(tmp_path / "ours"), "--nodes", "1", "--gpus-per-node", "1", "--seq-len", "64",
            "--global-batch-tokens", "64"]
    assert main(plan) == 0 and "layer pattern ***" in capsys.readouterr().out
    assert main(plan + ["--preset", "125m"]) == 2 and "leave out --preset" in capsys.readouterr().err


def _config(**changes):
    def edit(path):
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(config | changes))
    return edit


def _drop_shard(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    (path / sorted(set(index["weight_map"].values()))[-1]).unlink()


def _tokenizer_json_only(path):
    (path / "tokenizer.model").unlink()
    (path / "tokenizer.json").write_text("{}")


@pytest.mark.parametrize("edit, options, message", [
    (_config(model_type="mistral"), [], "model_type 'mistral' is not 'llama'"),
    (_config(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), [],
     "rope_parameters.rope_type 'llama3' is a scaled RoPE"),
    (_config(rope_scaling={"type": "linear", "factor": 2.0}), [], "rope_scaling .* is a scaled RoPE"),
    (_config(attention_bias=True, mlp_bias=True), [], "attention_bias true: .*; mlp_bias true"),
    (_config(head_dim=16), [], "head_dim 16 is not hidden_size / num_attention_heads = 32 / 4"),
    (_drop_shard, [], "names shards that are not there: model-0000"),
    (_tokenizer_json_only, [], "has a tokenizer.json but no tokenizer.model"),
    (None, ["--layer-pattern", "T*"], r"--layer-pattern 'T\*' has 2 symbols for 3 layers"),
])
def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys, llama, edit, options, message):
    src = shutil.copytree(llama[0], tmp_path / "src")
    if edit is not None:
        edit(src)
    with commands_own_process_group():
        assert main(["convert", "llama-to-mttt", str(src), str(tmp_path / "ours"), *options]) == 2
    err = capsys.readouterr().err
    assert "mttt convert: error" in err and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


TINY_PRESET = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, tie_word_embeddings=True, rms_norm_eps=1e-6)
"""A Llama of the tiny preset's shape, with the bundled tokenizer's 512 pieces: what the model
section of a pretraining config can describe."""
CONTINUED = ["train.steps=20", "data.global_batch_tokens=256", "model.backbone=transformer", "model.layer_pattern=TW",
             "model.document_boundaries=carry", "checkpoint.interval=20", "logging.eval_interval=20"]


@pytest.mark.slow
def test_a_converted_hybrid_continues_pretraining_and_tp_2_equals_tp_1(tmp_path, cache, groups):
    llama_dir(tmp_path / "src", **TINY_PRESET)
    shutil.copyfile(next(cache.glob("tokenizer-bpe-512/sp.model")), tmp_path / "src" / "tokenizer.model")
    convert.llama_to_mttt(tmp_path / "src", tmp_path / "tw", groups, HybridLayout("TW"))
    overrides = CONTINUED + [f"train.init_from={tmp_path / 'tw'}"]
    out = pretrain(tmp_path / "tp1", cache, overrides)
    pretrain(tmp_path / "tp2", cache, overrides + ["parallel.tensor_parallel=2"], 2)
    assert f"initialized from {tmp_path / 'tw'}" in out.stdout, out.stdout[-2000:]
    record = json.loads((tmp_path / "tp1" / "init_from.json").read_text())
    assert record["weights_checksum"] == weights_checksum(tmp_path / "tw")
    one, two = losses(tmp_path / "tp1"), losses(tmp_path / "tp2")
    assert sorted(one) == sorted(two) == list(range(1, 21))
    assert sum(one[s] for s in range(16, 21)) < 0.9 * sum(one[s] for s in range(1, 6)), one
    worst = max(abs(one[s] - two[s]) / one[s] for s in one)
    print(f"continued pretraining, TP 2 against TP 1: largest relative loss difference {worst:.1e}")
    assert worst <= 1e-5, (worst, one, two)


RELEASED_LIKE = dict(vocab_size=512, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3,
                     num_key_value_heads=1, tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=5e5,
                     initializer_range=0.02)
"""A Llama of no preset's shape (head dim 16, one key/value head), untied, eps 1e-5, RoPE base
5e5, initializer_range as Llama 2's, with the bundled tokenizer's 512 pieces: what continued
pretraining needs every model key for."""


@pytest.fixture(scope="module")
def released_like(tmp_path_factory, cache):
    """RELEASED_LIKE converted with `--layer-pattern TW*` by the command, and the pretrain
    overrides it printed."""
    root = tmp_path_factory.mktemp("released")
    llama_dir(root / "src", **RELEASED_LIKE)
    shutil.copyfile(next(cache.glob("tokenizer-bpe-512/sp.model")), root / "src" / "tokenizer.model")
    out = io.StringIO()
    with commands_own_process_group(), redirect_stdout(out):
        assert main(["convert", "llama-to-mttt", str(root / "src"), str(root / "tw"), "--layer-pattern", "TW*",
                     "--attention-window", "32"]) == 0
    command = next(line for line in out.getvalue().splitlines() if line.strip().startswith("mttt pretrain train."))
    words = shlex.split(command)
    assert words[:3] == ["mttt", "pretrain", f"train.init_from={root / 'tw'}"], command
    return root / "tw", words[2:], out.getvalue()


def test_the_printed_command_and_continue_yaml_describe_the_converted_model(released_like, cache):
    dst, overrides, printed = released_like
    keys = sorted(word.split("=")[0] for word in overrides)
    assert keys == sorted(["train.init_from", "model.preset", "model.backbone", "model.num_layers", "model.hidden_size",
                           "model.num_heads", "model.ffn_hidden_size", "model.layer_pattern", "model.attention_window",
                           "model.num_kv_heads", "model.document_boundaries", "model.rope_theta",
                           "model.rms_norm_eps", "model.tie_word_embeddings"]), overrides
    assert "model.document_boundaries=carry: as the converted model computes" in printed
    converted = read_model_config(dst)
    data = training_data(load_config(None, FAST).data, cache)
    from_command = load_config(None, FAST + overrides)
    from_yaml = load_config(dst / CONTINUE_FILE, FAST + [f"train.init_from={dst}"])
    for config in (from_command, from_yaml):
        check_world_size(config, 1)
        assert trained_model(config, data.tokenizer_vocab, data.eos_id, converted.vocab_size) == converted
    # A run saved with this section resumes to the same model without the source.
    assert model_differences(to_dict(from_command), to_dict(from_yaml)) == []
    assert model_differences(to_dict(load_config(None, FAST)), to_dict(from_command)) != []


def test_continued_pretraining_of_a_converted_model_of_no_preset_shape_starts_at_its_loss(tmp_path, cache, groups,
                                                                                         released_like):
    dst, overrides, _ = released_like
    # One micro-batch a step; the trainer in this process, as `mttt pretrain` builds it.
    config = load_config(None, FAST + overrides + [f"run_dir={tmp_path / 'run'}", "data.global_batch_tokens=256"])
    run = build(config, groups, cache)
    resume(run)
    assert run.init is not None and run.init.path == dst
    sources = training_data(config.data, cache)
    loader = TokenLoader(sources.manifests, LoaderConfig(config.data.micro_batch_size, seed=config.data.seed,
                                                         num_workers=0), 0, 1, sources.weights, (0, 1))
    batch = next(iter(loader))
    with torch.no_grad():
        want = load_model(dst, groups)(batch.tokens, batch.labels).mean().item()
    first = train_step(run, iter(run.loader))[0]
    print(f"continued pretraining: first loss {first:.6f}, the converted model's on that batch {want:.6f}")
    assert abs(first - want) <= 1e-5 * want, (first, want)
