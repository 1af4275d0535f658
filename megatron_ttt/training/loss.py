"""A micro-batch's loss from the model's per-token losses: their mean, or with data.mask_eod_loss
their mean over the positions whose input token is not EOS.

At an EOS the model predicts the first token of the next packed document, which nothing before it
can tell; Megatron-LM's --eod-mask-loss leaves those predictions out, and so does this.

Under context parallelism each rank holds a contiguous 1/CP of every sample's positions, and the
trainer's average over the data x context-parallel ranks must give the mean over the whole
micro-batch. Unmasked, each rank's mean over its T/CP positions is CP times its share of that
mean. Masked, the ranks hold different numbers of counted positions, so each rank divides its sum
by the CP group's total count and scales by CP as the plain mean does: the CP ranks' average is
then the mean over every counted position of the micro-batch, once.
"""

import torch
import torch.distributed as dist


def eod_mask(tokens: torch.Tensor, eos_id: int | None) -> torch.Tensor | None:
    """Where the loss counts: True at every position whose input is not EOS; None (every
    position counts) without an EOS to mask."""
    return None if eos_id is None else tokens != eos_id


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor, group_count: torch.Tensor,
                cp_size: int) -> torch.Tensor:
    """This rank's share of the mean over the counted positions of a micro-batch split over
    `cp_size` ranks that count `group_count` positions together, times cp_size. With nothing
    counted the loss is 0 (no gradient), not 0/0."""
    # torch.where, not a product: a non-finite loss at a masked position stays out of the sum.
    total = torch.where(mask, per_token, per_token.new_zeros(())).sum()
    return total * cp_size / group_count.clamp(min=1).to(per_token.dtype)


def token_mean(per_token: torch.Tensor, mask: torch.Tensor | None, cp_group: dist.ProcessGroup) -> torch.Tensor:
    """A micro-batch's loss on this rank from its per-token losses [B, T/CP]: their mean, or with
    a mask `masked_mean` over the positions it keeps, counted over the CP group."""
    if mask is None:
        return per_token.mean()  # exactly the loss of a run without masking
    count = mask.sum()
    dist.all_reduce(count, group=cp_group)
    return masked_mean(per_token, mask, count, dist.get_world_size(cp_group))


class SourceLosses:
    """Each source's training loss over a step of a blend: the mean loss of its tokens (those
    the training loss counts), over the step's micro-batches and every data- and
    context-parallel rank. Only reported: the gradient comes from the blended loss."""

    def __init__(self, sources: int):
        self.sums = torch.zeros(sources, dtype=torch.float64)
        self.counts = torch.zeros(sources, dtype=torch.float64)

    def add(self, per_token: torch.Tensor, mask: torch.Tensor | None, sources: torch.Tensor) -> None:
        """One micro-batch: per-token losses [B, T/CP], the counted positions (or None), each
        sample's source [B]."""
        losses = per_token.detach().double()
        if mask is None:
            mask = torch.ones_like(losses, dtype=torch.bool)
        self.sums.index_add_(0, sources, torch.where(mask, losses, 0.0).sum(1))
        self.counts.index_add_(0, sources, mask.sum(1).double())

    def means(self, group: dist.ProcessGroup) -> list[float | None]:
        """Each source's mean over the group's ranks (None for a source the step drew nothing from)."""
        both = torch.stack([self.sums, self.counts])
        dist.all_reduce(both, group=group)
        return [(s / c).item() if c else None for s, c in zip(*both)]
