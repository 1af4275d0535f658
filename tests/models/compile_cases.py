"""What the compiled-block tests run: a model and its compiled copy from the same weights, a few
training steps each, and how many graphs the compiler built."""

import torch
from torch._dynamo.utils import counters

from megatron_ttt.models.compile import compile_blocks
from megatron_ttt.models.language_model import TTTLanguageModel
from tests.models.tp_cases import rel

STEPS = 2
LR = 0.05


def fresh_compiler() -> None:
    """Forget every compiled graph and count from zero."""
    torch._dynamo.reset()
    counters.clear()


def graphs() -> int:
    """Graphs the compiler built since fresh_compiler()."""
    return counters["stats"]["unique_graphs"]


def train(model: TTTLanguageModel, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[list, dict]:
    """STEPS plain SGD steps on the summed token loss: each step's loss and the last gradients."""
    losses = []
    for _ in range(STEPS):
        model.zero_grad(set_to_none=True)
        loss = model(tokens, labels).sum()
        loss.backward()
        losses.append(loss.detach())
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad
    return losses, {n: p.grad.clone() for n, p in model.named_parameters()}


def compiled_against_eager(eager: TTTLanguageModel, compiled: TTTLanguageModel, tokens: torch.Tensor,
                           labels: torch.Tensor, fullgraph: bool = True) -> dict:
    """compiled (a copy of eager's weights) has its blocks compiled with aot_eager, which traces
    the forward and backward graphs as inductor gets them; both train STEPS steps. The largest
    relative differences of a step's loss and of the last step's gradients, and the graphs built."""
    compiled.load_state_dict(eager.state_dict())
    fresh_compiler()
    compile_blocks(compiled, "aot_eager", fullgraph)
    losses, grads = train(compiled, tokens, labels)
    built = graphs()
    ref_losses, ref_grads = train(eager, tokens, labels)
    worst = max(ref_grads, key=lambda n: rel(grads[n], ref_grads[n]))
    return {"loss": max(rel(a, b) for a, b in zip(losses, ref_losses)), "grads": rel(grads[worst], ref_grads[worst]),
            "worst": worst, "graphs": built}


def tp2_cp2(rank: int, world: int, store, cfg) -> dict:
    """TP 2 x CP 2: this rank's comparison on its slice of the sequence (without sequence parallelism:
    on a CPU megatron-core places its gathers by the CUDA shim, which dynamo cannot trace)."""
    from megatron_ttt.models.build import megatron_config
    from megatron_ttt.models.parameters import to_local
    from megatron_ttt.parallel.context import local_slice
    from megatron_ttt.parallel.layout import ParallelLayout
    from megatron_ttt.parallel.setup import destroy_parallel, init_parallel
    from tests.models.weights import random_reference_weights

    groups = init_parallel(ParallelLayout(2, False, 2), store=store)
    config = megatron_config(cfg, 2, False, context_parallel=2)
    eager, compiled = (TTTLanguageModel(config, cfg, groups) for _ in range(2))
    eager.load_state_dict(to_local(random_reference_weights(cfg, seed=1, dtype=torch.float32), cfg,
                                   torch.distributed.get_rank(groups.tp), 2))
    g = torch.Generator().manual_seed(2)
    tokens, labels = (local_slice(torch.randint(0, cfg.vocab_size, (2, 32), generator=g), 1, groups.cp)
                      for _ in range(2))
    result = compiled_against_eager(eager, compiled, tokens, labels, fullgraph=False)
    destroy_parallel()
    return result

