"""`mttt eval logprobs` follows how a model was trained: a model saved with
document_boundaries=reset scores document B after [A, EOS] exactly as B alone, a TTT model and a
hybrid of TTT and sliding-window attention alike; under carry, A changes B's scores."""

from dataclasses import replace

import numpy as np
import pytest

from megatron_ttt.cli import main
from megatron_ttt.data.tokenizer import Tokenizer
from megatron_ttt.parallel.layout import ParallelLayout
from megatron_ttt.parallel.setup import parallel_groups
from tests.eval.conftest import MODEL, _save

HYBRID = replace(MODEL, layer_pattern="TW", attention_window=6)


def logprobs(model_dir, ids: np.ndarray, tmp_path, name: str) -> np.ndarray:
    ids_path, out = tmp_path / f"{name}.npy", tmp_path / f"{name}-lp.npy"
    np.save(ids_path, ids)
    assert main(["eval", "logprobs", "--checkpoint", str(model_dir), "--input", str(ids_path),
                 "--output", str(out)]) == 0
    return np.load(out)


@pytest.mark.parametrize("cfg", [MODEL, HYBRID], ids=["ttt", "hybrid-TW"])
def test_a_document_after_eos_scores_as_if_alone(eval_data, tmp_path, cfg):
    eos = Tokenizer(str(eval_data.tokenizer_path)).eos_id
    rng = np.random.default_rng(0)
    a, b = rng.integers(3, 600, 13), rng.integers(3, 600, 21)
    packed, alone = np.concatenate([a, [eos], b])[None], b[None]
    scores = {}
    for boundaries in ("reset", "carry"):
        directory = tmp_path / boundaries
        with parallel_groups(ParallelLayout()) as groups:
            _save(replace(cfg, document_boundaries=boundaries, eos_token_id=eos), directory, 0, groups)
        # log p(b[t+1] | ...) for t >= 0: the packed row's last len(b) - 1 scores.
        scores[boundaries] = (logprobs(directory, packed, tmp_path, "packed")[0, -(len(b) - 1):],
                              logprobs(directory, alone, tmp_path, "alone")[0])
    assert np.abs(np.subtract(*scores["reset"])).max() < 1e-5
    assert np.abs(np.subtract(*scores["carry"])).max() > 1e-3
