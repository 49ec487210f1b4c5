"""SpecAugment: reproducible masks from a CPU generator, inside each sample's real frames."""

import pytest
import torch

from streamtrain.features import SpecAugment, generator_for_step

LENGTHS = torch.tensor([3000, 1200, 37, 0])


@pytest.fixture(scope="module")
def features() -> torch.Tensor:
    return torch.randn(4, 80, 3000, generator=torch.Generator().manual_seed(0)) + 10.0  # never 0


def _mask(features, augmented):
    return augmented != features


def test_same_seed_same_masks(features):
    augment = SpecAugment()
    first = augment(features, LENGTHS, generator_for_step(seed=7, step=123))
    second = augment(features, LENGTHS, generator_for_step(seed=7, step=123))
    assert torch.equal(first, second)
    assert _mask(features, first).any()


@pytest.mark.parametrize("seed, step", [(8, 123), (7, 124)])
def test_other_seed_or_step_other_masks(features, seed, step):
    augment = SpecAugment()
    reference = augment(features, LENGTHS, generator_for_step(seed=7, step=123))
    assert not torch.equal(reference, augment(features, LENGTHS, generator_for_step(seed, step)))


def test_masks_stay_inside_real_frames(features):
    augment = SpecAugment(freq_masks=3, time_masks=4, time_width=400)
    for step in range(20):
        mask = _mask(features, augment(features, LENGTHS, generator_for_step(0, step)))
        for row, length in enumerate(LENGTHS.tolist()):
            assert not mask[row, :, length:].any()
            if length == 0:
                continue
            # a bin is masked over all real frames (frequency mask) or at the time-masked frames only
            band = mask[row, :, :length].all(dim=1)
            frames = mask[row, ~band, :length]
            assert (frames == frames[:1]).all()
            assert frames[:1].sum() <= 4 * 400
            assert band.sum() <= 3 * 27


def test_widths_are_bounded():
    features = torch.ones(64, 80, 500)
    lengths = torch.full((64,), 500)
    augment = SpecAugment(freq_masks=1, freq_width=5, time_masks=1, time_width=100, time_width_ratio=0.05)
    mask = augment(features, lengths, generator_for_step(1, 1)) == 0
    time_only = mask.all(dim=1).sum(dim=1)  # frames masked in every bin
    bins_only = mask.all(dim=2).sum(dim=1)  # bins masked in every frame
    assert time_only.max() <= 25 and bins_only.max() <= 5
    assert time_only.float().mean() > 5 and bins_only.float().mean() > 1


def test_draws_do_not_depend_on_layout_dtype_or_device(features):
    """The masks come from the CPU generator alone: the same for B x D x F and B x F x D,
    for float64 and float32, and (when a GPU is present) on the GPU."""
    generator_state = generator_for_step(3, 9).get_state()

    def masks(augment, tensor):
        generator = torch.Generator().set_state(generator_state)
        return _mask(tensor, augment(tensor, LENGTHS.to(tensor.device), generator)).cpu()

    reference = masks(SpecAugment(time_dim=2), features)
    assert torch.equal(masks(SpecAugment(time_dim=1), features.transpose(1, 2)).transpose(1, 2), reference)
    assert torch.equal(masks(SpecAugment(), features.double()), reference)
    if torch.cuda.is_available():
        assert torch.equal(masks(SpecAugment(), features.cuda()), reference)


def test_generator_for_step_is_a_pure_function():
    first = torch.rand(4, generator=generator_for_step(5, 10))
    assert torch.equal(first, torch.rand(4, generator=generator_for_step(5, 10)))
    assert not torch.equal(first, torch.rand(4, generator=generator_for_step(5, 11)))
    assert not torch.equal(first, torch.rand(4, generator=generator_for_step(6, 10)))


def test_errors(features):
    augment = SpecAugment()
    with pytest.raises(ValueError):
        augment(features[0], LENGTHS, torch.Generator())
    with pytest.raises(ValueError):
        augment(features, torch.tensor([3001, 0, 0, 0]), torch.Generator())
    with pytest.raises(ValueError):
        augment(features, LENGTHS[:2], torch.Generator())
    with pytest.raises(ValueError):
        SpecAugment(time_dim=0)
    with pytest.raises(ValueError):
        SpecAugment(freq_width=-1)
    with pytest.raises(ValueError):
        SpecAugment(time_width_ratio=1.5)


def test_micro_batches_draw_the_same_masks(features):
    """Splitting a batch in order (as gradient accumulation or OOM back-off does) keeps every sample's masks."""
    augment = SpecAugment()
    whole = augment(features, LENGTHS, generator_for_step(4, 2))
    generator = generator_for_step(4, 2)
    pieces = [augment(features[piece], LENGTHS[piece], generator) for piece in (slice(0, 1), slice(1, 4))]
    assert torch.equal(torch.cat(pieces), whole)
