"""Generation: each new token's logits equal a full forward over prompt + generated tokens,
sampling is greedy at temperature 0 and seeded otherwise, and `mttt generate` runs end to end
with clear errors for bad inputs."""

import itertools
import re
from dataclasses import replace

import pytest
import torch

from megatron_ttt.models.parameters import to_local
from megatron_ttt.cli import main
from megatron_ttt.errors import UserInputError
from megatron_ttt.eval.generate import SamplingConfig, generate, sample_next
from megatron_ttt.eval.generate_run import check_compilable
from megatron_ttt.models.config import TTTModelConfig
from megatron_ttt.models.build import megatron_config
from megatron_ttt.models.language_model import TTTLanguageModel
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
from tests.distributed import run_distributed
from tests.eval.conftest import MODEL, loaded_model
from tests.models.tp_cases import TINY, rel
from tests.models.weights import random_reference_weights


@pytest.fixture
def one_process():
    """Per test, so the commands' tests below can set up their own process group."""
    yield init_parallel(ParallelLayout())
    destroy_parallel()


def model_of(groups, layer_type: str, backbone: str, dtype: torch.dtype) -> TTTLanguageModel:
    cfg = replace(TINY, layer_type=layer_type, backbone=backbone)
    model = TTTLanguageModel(megatron_config(cfg, 1, False, dtype), cfg, groups)
    model.load_state_dict(to_local(random_reference_weights(cfg, seed=5, dtype=dtype), cfg, 0, 1))
    return model


@pytest.mark.parametrize("layer_type,backbone", list(itertools.product(("linear", "mlp"), ("transformer", "mamba"))))
def test_generated_logits_equal_a_full_forward(one_process, layer_type, backbone):
    model = model_of(one_process, layer_type, backbone, torch.float64)
    prompt = torch.randint(0, TINY.vocab_size, (2, 7), generator=torch.Generator().manual_seed(6))
    out = generate(model, prompt, SamplingConfig(max_new_tokens=20, temperature=0.8, seed=1), keep_logits=True)
    assert out.tokens.shape == (2, 20)
    with torch.no_grad():
        full = model(torch.cat((prompt, out.tokens[:, :-1]), dim=1))[:, prompt.shape[1] - 1:].float()
    for i in range(20):
        assert rel(out.logits[:, i], full[:, i]) < 1e-6, f"new token {i}"


def test_sampling_rules():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, SamplingConfig(temperature=0.0), g).tolist() == [1, 0]
    # top-p smaller than the largest probability: only the most likely token remains.
    assert sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.01), g).tolist() == [1, 0]
    draws = lambda seed: [sample_next(logits, SamplingConfig(temperature=2.0), torch.Generator().manual_seed(seed))
                          for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(draws(3), draws(3)))
    many = torch.stack([sample_next(logits[:1], SamplingConfig(temperature=1.0, top_p=0.9), g) for _ in range(300)])
    assert set(many.flatten().tolist()) == {1, 3}  # p = [.04, .50, .07, .40]: the nucleus at 0.9 is {1, 3}
    assert sample_next(logits, SamplingConfig(vocab_limit=3), g).tolist() == [1, 0]


def test_generate_command(eval_data, capsys):
    args = ["generate", "--checkpoint", str(eval_data.model_dir), "--data", str(eval_data.manifest_path),
            "--prompt", "the model learns", "--max-new-tokens", "12", "--temperature", "0.7", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert first.out.startswith("the model learns") and re.search(r"12 new tokens: [\d.]+ ms/token after the first "
                                                                  r"step \(first step [\d.]+ s\)", first.err)
    assert main(args[:2] + [str(eval_data.model_dir), "--tokenizer", str(eval_data.tokenizer_path)] + args[5:]) == 0
    assert capsys.readouterr().out == first.out  # same seed, same tokenizer: the same text
    assert main(args + ["--compile"]) == 0
    compiled = capsys.readouterr()
    assert compiled.out == first.out  # the compiled decode step: the same text
    assert re.search(r"ms/token after the first step \(first step [\d.]+ s \(compiling\)\)", compiled.err)


def test_compiled_decoding_of_attention_layers_or_at_tp_2_is_refused_in_one_line():
    with pytest.raises(UserInputError, match=r"--compile decodes models of TTT layers only; this one has attention "
                                             r"layers \('TW\*T': \*, W, whose cache grows or slides\)"):
        check_compilable(TTTModelConfig(**(MODEL.to_dict() | {"num_layers": 4, "layer_pattern": "TW*T"})), 1)
    with pytest.raises(UserInputError, match="--compile decodes at --tensor-parallel 1, not 2"):
        check_compilable(MODEL, 2)


@pytest.mark.parametrize("change,message", [
    (["--prompt", "  "], r"the prompt is empty"),
    (["--checkpoint", "SMALL"], r"tokenizer .* has 600 pieces, more than the vocabulary of 512"),
    (["--tokenizer", None], r"no tokenizer: .* has no tokenizer.model; pass --tokenizer MODEL or --data MANIFEST"),
    (["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
    (["--max-new-tokens", "0"], r"--max-new-tokens must be >= 1"),
])
def test_bad_inputs_are_named(eval_data, capsys, change, message):
    values = {"--checkpoint": str(eval_data.model_dir), "--tokenizer": str(eval_data.tokenizer_path),
              "--prompt": "the model"}
    flag, value = change
    values[flag] = str(eval_data.small_vocab_dir) if value == "SMALL" else value
    args = ["generate"] + [x for k, v in values.items() if v is not None for x in (k, v)]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)


def tp_generation(rank: int, world: int, store, tp: int, model_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    with loaded_model(model_dir, tp, store=store) as (model, _):
        out = generate(model, torch.arange(3, 14)[None], SamplingConfig(max_new_tokens=18, temperature=1.0, seed=2),
                       keep_logits=True)
    return out.tokens, out.logits


@pytest.mark.slow
def test_tensor_parallel_generation_equals_one_process(eval_data):
    tokens, logits = tp_generation(0, 1, None, 1, str(eval_data.model_dir))
    for tp_tokens, tp_logits in run_distributed(2, tp_generation, 2, str(eval_data.model_dir)):
        assert torch.equal(tp_tokens, tokens)
        assert rel(tp_logits, logits) < 1e-5


def test_a_run_and_its_conversion_carry_their_tokenizer(uninterrupted, tmp_path, capsys):
    args = ["generate", "--prompt", "def", "--max-new-tokens", "4", "--seed", "1", "--checkpoint"]
    assert main(args + [str(uninterrupted)]) == 0
    text = capsys.readouterr().out
    assert main(["convert", "mttt-to-mttt", str(uninterrupted), str(tmp_path / "copy")]) == 0
    assert main(args + [str(tmp_path / "copy")]) == 0
    assert capsys.readouterr().out.endswith(text)
