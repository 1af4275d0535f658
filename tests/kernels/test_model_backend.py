"""The model on the Triton kernels equals the model on the PyTorch dual form: loss and every
gradient, reading across packed documents (carry) or restarting at each (reset; the dual form
equals each document alone, tests/models/test_documents.py)."""

import pytest
import torch

from megatron_ttt.models.build import build_model
from megatron_ttt.models.presets import preset
from megatron_ttt.run_options import InnerLoopOptions
from tests.ops.inputs import rel_err


EOS_AT = ([5, 16, 17], [30])
"""Under document_boundaries=reset: documents inside a mini-batch, on its edge, after EOS after
EOS, and rows that end at different positions of their last mini-batch."""


@pytest.mark.parametrize("boundaries", ["carry", "reset"])
@pytest.mark.parametrize("layer_type", ["linear", "mlp"])
def test_triton_model_equals_torch_model(groups, layer_type, boundaries):
    torch.manual_seed(0)
    cfg = preset("tiny", layer_type, "mamba", vocab_size=128, num_layers=1, document_boundaries=boundaries,
                 eos_token_id=127)
    models = {b: build_model(cfg, groups, InnerLoopOptions(b, time_checkpoint_group=2), init_seed=0)
              for b in ("torch", "triton")}
    tokens = torch.randint(0, 127, (2, 37))
    for row, positions in enumerate(EOS_AT):
        tokens[row, positions] = 127
    grads = {}
    for backend, model in models.items():
        loss = model(tokens[:, :-1], labels=tokens[:, 1:]).mean()
        grads[backend] = [loss, *torch.autograd.grad(loss, list(model.parameters()))]
    names = ["loss"] + [n for n, _ in models["torch"].named_parameters()]
    errors = {n: rel_err(t, w) for n, t, w in zip(names, grads["triton"], grads["torch"])}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{worst}: {errors[worst]:.2e}"
