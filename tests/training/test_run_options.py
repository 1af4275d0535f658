"""How a run ran its inner loop is not part of its model: a checkpoint of a run on the Triton
kernels (as its run config and an older build's model_config.json say) evaluates, generates and
converts on a machine without CUDA, and a run directory stands for its latest checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron_ttt.checkpoint.model_dir import load_model
from megatron_ttt.config.sections import DataSection
from megatron_ttt.data.manifest import Manifest
from megatron_ttt.data.tokenizer import Tokenizer
from megatron_ttt.models.scoring import token_logprobs
from megatron_ttt.training.data import bundled_manifest_path
from tests.training.runs import pretrain, reseal

SEQ = ["train.steps=3", "checkpoint.interval=3"]


@pytest.fixture(scope="module")
def triton_run(tmp_path_factory, cache):
    """A 3-step CPU run whose checkpoint then says it ran on the kernels, the way a GPU run's does
    (run_config.json), with the two run-option keys older builds wrote into model_config.json."""
    run = tmp_path_factory.mktemp("triton") / "run"
    pretrain(run, cache, SEQ)
    step = run / "checkpoints" / "step-00000003"
    config = json.loads((step / "run_config.json").read_text())
    config["train"]["inner_loop_backend"] = "triton"
    (step / "run_config.json").write_text(json.dumps(config))
    model = json.loads((step / "model_config.json").read_text())
    assert "inner_loop_backend" not in model and "checkpoint_group" not in model
    (step / "model_config.json").write_text(json.dumps(model | {"inner_loop_backend": "triton", "checkpoint_group": 3}))
    reseal(step)
    return run


def mttt(*args: str, cwd) -> subprocess.CompletedProcess:
    """A command as a user runs it on a CPU machine (no Triton interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "megatron_ttt.cli", *args], capture_output=True, text=True, env=env,
                         cwd=cwd)
    assert out.returncode == 0, f"mttt {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out


def greedy_text(model, tokenizer: Tokenizer, prompt: str, new_tokens: int) -> str:
    """The prompt and its greedy continuation by full forwards (no cache): what `mttt generate`
    prints at temperature 0, the way it frames the prompt (EOS first) and stops (at EOS)."""
    ids, new = [tokenizer.eos_id, *tokenizer.encode([prompt])[0]], []
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = model.gather_logits(model(torch.tensor([ids + new])))
        token = int(logits[0, -1, :tokenizer.vocab_size].argmax())
        if token == tokenizer.eos_id:
            break
        new.append(token)
    return prompt + tokenizer.decode(new)


@pytest.mark.slow
def test_a_triton_run_evaluates_generates_and_converts_on_the_cpu(triton_run, cache, tmp_path, groups):
    step = triton_run / "checkpoints" / "step-00000003"
    model = load_model(step, groups).eval()
    ids = np.random.default_rng(0).integers(0, model.ttt.vocab_size, (2, 40))
    np.save(tmp_path / "ids.npy", ids)
    for source, name in ((triton_run, "run"), (step, "step")):
        mttt("eval", "logprobs", "--checkpoint", str(source), "--input", str(tmp_path / "ids.npy"),
             "--output", str(tmp_path / f"{name}.npy"), cwd=tmp_path)
    by_run, by_step = np.load(tmp_path / "run.npy"), np.load(tmp_path / "step.npy")
    assert np.array_equal(by_run, by_step)
    with torch.no_grad():
        expected = token_logprobs(model, torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(by_run, expected, rtol=0, atol=1e-5)

    manifest = bundled_manifest_path(DataSection(seq_len=64, bundled_vocab_size=512), cache)
    tokenizer = Tokenizer(Manifest.load(manifest).settings.tokenizer.path)
    out = mttt("generate", "--checkpoint", str(triton_run), "--data", str(manifest), "--prompt", "The",
               "--max-new-tokens", "5", cwd=tmp_path)
    assert out.stdout.splitlines()[0] == greedy_text(model, tokenizer, "The", 5)

    out = mttt("convert", "mttt-to-hf", str(triton_run), str(tmp_path / "hf"), cwd=tmp_path)
    assert "self-check" in out.stdout and (tmp_path / "hf" / "model.safetensors").exists()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["scan_checkpoint_group_size"] == 0
