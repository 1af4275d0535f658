"""Configs: YAML + overrides with types checked, and the generated reference in the docs."""

from pathlib import Path

import pytest

from megatron_ttt.config import load_config
from megatron_ttt.config.loading import ConfigError
from megatron_ttt.config.reference import markdown


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  layer_type: mlp\ntrain:\n  steps: 50\n")
    config = load_config(path, ["train.steps=7", "parallel.sequence_parallel=true", "optimizer.lr=1e-4"])
    assert (config.model.layer_type, config.train.steps, config.parallel.sequence_parallel, config.optimizer.lr) == \
        ("mlp", 7, True, 1e-4)


@pytest.mark.parametrize("override, message", [
    ("train.stepz=5", "unknown key 'stepz'"),
    ("train.steps=many", "override.train.steps: 'many' is not a int"),
    ("parallel.sequence_parallel=maybe", "is not a boolean"),
    ("train", "not of the form section.key=value"),
    ("model=3", "is a section"),
    ("checkpoint.interval=0", r"must be at least 1 .*checkpoint.interval=0"),
    ("logging.eval_batches=0", r"logging.eval_batches=0"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_docs_hold_the_generated_reference():
    text = (Path(__file__).parents[2] / "docs" / "training.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert text[text.index(start) + len(start):text.index(end)] == markdown(), \
        "regenerate with: python -m megatron_ttt.config.reference"
