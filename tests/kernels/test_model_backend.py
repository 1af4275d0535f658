"""The model on the Triton kernels equals the model on the PyTorch dual form: loss and every gradient."""

import pytest
import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.presets import preset
from megatron_ttt.run_options import InnerLoopOptions
from tests.ops.inputs import rel_err


@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
def test_triton_model_equals_torch_model(groups, layer_type):
    torch.manual_seed(0)
    cfg = preset("tiny", layer_type, "mamba", vocab_size=128, num_layers=1)
    models = {b: build_model(cfg, groups, InnerLoopOptions(b, time_checkpoint_group=2), init_seed=0)
              for b in ("torch", "triton")}
    tokens = torch.randint(0, 128, (2, 37))
    grads = {}
    for backend, model in models.items():
        loss = model(tokens[:, :-1], labels=tokens[:, 1:]).mean()
        grads[backend] = [loss, *torch.autograd.grad(loss, list(model.parameters()))]
    names = ["loss"] + [n for n, _ in models["torch"].named_parameters()]
    errors = {n: rel_err(t, w) for n, t, w in zip(names, grads["triton"], grads["torch"])}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{worst}: {errors[worst]:.2e}"
