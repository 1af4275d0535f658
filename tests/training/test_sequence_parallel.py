import pytest

from tests.training.runs import losses, pretrain


@pytest.mark.slow
def test_sequence_parallel_is_built_and_equals_plain_tensor_parallel(tmp_path, cache):
    overrides = ["parallel.tensor_parallel=2", "train.steps=4", "checkpoint.interval=4"]
    out = pretrain(tmp_path / "sp", cache, [*overrides, "parallel.sequence_parallel=true"], 2)
    assert "layout: TP 2 with sequence parallel, CP 1, DP 1" in out.stdout
    tp = losses(pretrain(tmp_path / "tp", cache, overrides, 2) and tmp_path / "tp")
    sp = losses(tmp_path / "sp")
    assert sp.keys() == tp.keys()
    for step in tp:
        assert abs(sp[step] - tp[step]) <= 1e-5 * abs(tp[step]), (step, sp[step], tp[step])
