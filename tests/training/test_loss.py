"""data.mask_eod_loss: the loss leaves out the predictions made at EOS, is the mean over the other
positions (also split over context-parallel ranks), is today's mean with the setting off, and a
tokenizer without EOS is refused at start-up."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from megatron_ttt.config.sections import DataSection
from megatron_ttt.data import DataError, Manifest
from megatron_ttt.models.build import build_model
from megatron_ttt.models.presets import preset
from megatron_ttt.training.data import TrainingData, bundled_manifest_path, eod_mask_id
from megatron_ttt.training.loss import eod_mask, masked_mean, token_mean
from megatron_ttt.training.trainer import micro_batch_loss

EOS, VOCAB = 2, 128


def packed_batch(seed: int = 0) -> SimpleNamespace:
    """Two samples of 32 tokens with documents ending at EOS in several places, one at the end."""
    samples = torch.randint(3, VOCAB, (2, 33), generator=torch.Generator().manual_seed(seed))
    samples[0, [5, 6, 20]] = EOS
    samples[1, [11, 32]] = EOS
    return SimpleNamespace(tokens=samples[:, :-1], labels=samples[:, 1:])


def run_with(groups, masked_token):
    """What micro_batch_loss reads of a Run."""
    return SimpleNamespace(masked_token=masked_token, groups=groups)


@pytest.fixture
def model(groups):
    return build_model(preset("tiny", vocab_size=VOCAB, num_layers=1), groups, init_seed=0)


def loss_and_grads(model, run, batch):
    model.zero_grad()
    loss = micro_batch_loss(run, model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_mask_drops_the_positions_whose_input_is_eos():
    tokens = torch.tensor([[5, EOS, 7, EOS], [EOS, 3, 4, 5]])
    assert eod_mask(tokens, EOS).tolist() == [[True, False, True, False], [False, True, True, True]]
    assert eod_mask(tokens, None) is None


def test_a_label_after_eos_changes_neither_the_loss_nor_the_gradients(model, groups):
    batch = packed_batch()
    run = run_with(groups, EOS)
    loss, grads = loss_and_grads(model, run, batch)
    at_eos = batch.tokens == EOS
    changed = SimpleNamespace(tokens=batch.tokens, labels=torch.where(at_eos, (batch.labels + 1) % VOCAB, batch.labels))
    loss_changed, grads_changed = loss_and_grads(model, run, changed)
    assert torch.equal(loss, loss_changed)
    assert all(torch.equal(grads[n], grads_changed[n]) for n in grads)
    # Unmasked, the same change moves the loss: the positions are real predictions.
    assert micro_batch_loss(run_with(groups, None), model, batch) != micro_batch_loss(run_with(groups, None), model,
                                                                                      changed)


def test_the_masked_loss_is_the_mean_over_the_other_positions(model, groups):
    batch = packed_batch(1)
    per_token = model(batch.tokens, batch.labels).detach()
    keep = batch.tokens != EOS
    got = micro_batch_loss(run_with(groups, EOS), model, batch)
    torch.testing.assert_close(got, per_token[keep].mean(), rtol=1e-6, atol=0)


def test_off_is_the_plain_mean_bit_for_bit(model, groups):
    batch = packed_batch(2)
    assert torch.equal(micro_batch_loss(run_with(groups, None), model, batch),
                       model(batch.tokens, batch.labels).mean())


@pytest.mark.parametrize("cp", [2, 4])
def test_context_parallel_ranks_average_to_the_mean_over_the_unmasked_tokens(cp):
    """Each rank holds a contiguous 1/cp of the positions and a different count of unmasked ones;
    the ranks' losses (and gradients), averaged as the trainer averages them, are the plain
    mean's."""
    generator = torch.Generator().manual_seed(cp)
    per_token = torch.rand(3, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(3, 16, generator=generator) < 0.6
    keep[:, : 16 // cp] = False  # rank 0 counts nothing: the counts differ per rank
    count = keep.sum()
    ranks = [masked_mean(x, k, count, cp) for x, k in zip(per_token.chunk(cp, dim=1), keep.chunk(cp, dim=1))]
    averaged = sum(ranks) / cp
    want = per_token[keep].mean()
    torch.testing.assert_close(averaged, want, rtol=1e-12, atol=0)
    (got_grad,) = torch.autograd.grad(averaged, per_token)
    (want_grad,) = torch.autograd.grad(want, per_token)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=0)


def test_a_micro_batch_of_only_eos_gives_zero_not_nan(groups):
    per_token = torch.rand(2, 8, requires_grad=True)
    loss = token_mean(per_token, torch.zeros(2, 8, dtype=torch.bool), groups.cp)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(per_token.grad, torch.zeros(2, 8))


def test_a_non_finite_loss_at_a_masked_position_stays_out(groups):
    per_token = torch.tensor([[1.0, float("inf"), 3.0]])
    assert token_mean(per_token, torch.tensor([[True, False, True]]), groups.cp).item() == 2.0


def without_eos(cache) -> TrainingData:
    """The bundled corpus's manifest as if its tokenizer had no EOS piece."""
    manifest = Manifest.load(bundled_manifest_path(DataSection(seq_len=64, bundled_vocab_size=512), cache))
    tokenizer = dataclasses.replace(manifest.settings.tokenizer, eos_id=-1)
    manifest = dataclasses.replace(manifest, settings=dataclasses.replace(manifest.settings, tokenizer=tokenizer))
    return TrainingData([manifest], [1.0], ["bundled"])


def test_a_tokenizer_without_eos_is_refused_naming_the_setting_and_the_manifest(cache):
    sources = without_eos(cache)
    with pytest.raises(DataError, match=r"data\.mask_eod_loss=true") as error:
        eod_mask_id(DataSection(mask_eod_loss=True), sources)
    assert str(sources.manifests[0].directory / "manifest.json") in str(error.value)
    assert eod_mask_id(DataSection(), sources) is None  # off: nothing is asked of the tokenizer


def test_the_masked_token_is_the_tokenizers_eos(cache):
    manifest = Manifest.load(bundled_manifest_path(DataSection(seq_len=64, bundled_vocab_size=512), cache))
    sources = TrainingData([manifest], [1.0], ["bundled"])
    assert eod_mask_id(DataSection(mask_eod_loss=True), sources) == manifest.settings.tokenizer.eos_id >= 0
