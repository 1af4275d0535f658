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
