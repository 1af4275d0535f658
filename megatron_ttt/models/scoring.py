"""Next-token log-probabilities of token sequences under a model: what evaluation reports and
what every conversion checks itself with."""

import torch
from tqdm import tqdm

from megatron_ttt.models.language_model import TTTLanguageModel


def next_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits [N, T, V] of tokens [N, T] -> float32 [N, T-1]: log p(tokens[:, t+1] | ..t)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


@torch.no_grad()
def token_logprobs(model: TTTLanguageModel, tokens: torch.Tensor, batch_size: int = 8,
                   show_progress: bool = False) -> torch.Tensor:
    """tokens [N, T] -> float32 [N, T-1]: log p(tokens[:, t+1] | tokens[:, :t+1])."""
    model.eval()
    out = []
    for start in tqdm(range(0, tokens.shape[0], batch_size), unit="batch", disable=not show_progress):
        batch = tokens[start:start + batch_size]
        out.append(next_token_logprobs(model.gather_logits(model(batch)), batch))
    return torch.cat(out)
