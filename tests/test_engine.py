"""The engine: forward batches bounded by max_batch whatever the number of draws, counts on the device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import smoothcore
from smoothcore import ConfigError
from smoothcore.engine import Engine
from smoothcore.streams import DrawStream
from tests.conftest import quantised


class Spy(nn.Module):
    """Records every forward batch size; classifies by the mean pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.head = nn.Linear(1, 3)

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.head(x.flatten(1).mean(1, keepdim=True))


def test_dssn_with_3091_draws_on_imagenet_sized_images_stays_within_the_batch_budget():
    """Peak memory does not grow with the number of draws: every forward batch and every tensor of draws stays
    within max_batch images, at sigma 3.5 (3,091 draws) on 224x224 images as at sigma 0.25 (the enumeration is
    cut after a few batches to keep the test quick; the batches are the same all the way)."""
    for sigma, draws_total in ((3.5, 3091), (0.25, 220)):
        spy = Spy()
        noise = smoothcore.noise("dssn", sigma=sigma, dim=3 * 224 * 224)
        assert noise.num_draws == draws_total
        drawn = []
        original = noise.draws

        def recording_draws(x, start, stop, original=original, drawn=drawn):
            out = original(x, start, stop)
            drawn.append(out.numel())
            return out

        noise.draws = recording_draws
        engine = Engine(spy, 3, max_batch=64)
        counts, done = engine.exact_counts(
            noise, quantised((2, 3, 224, 224)), stop_when=lambda c, d: torch.tensor([d >= 192] * len(c))
        )
        assert max(spy.sizes) <= 64 and max(drawn) <= 64 * 3 * 224 * 224
        assert int(counts.sum()) == sum(spy.sizes) == int(done.sum())


def test_monte_carlo_batches_pack_images_without_exceeding_the_budget():
    spy = Spy()
    noise = smoothcore.noise("uniform", sigma=0.3, dim=16)
    smoothcore.SmoothedClassifier(spy, noise, 3, max_batch=100).certify(quantised((7, 1, 4, 4)), n0=10, n=130)
    assert max(spy.sizes) <= 100 and sum(spy.sizes) == 7 * 140


def test_counts_stay_on_the_model_device_and_sum_to_the_draws():
    engine = Engine(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), 4, max_batch=50)
    noise = smoothcore.noise("dssn", sigma=0.2, dim=16)
    counts, done = engine.exact_counts(noise, quantised((3, 1, 4, 4)))
    assert counts.device == engine.device and counts.dtype == torch.long
    assert counts.sum(1).tolist() == [noise.num_draws] * 3 and done.tolist() == [noise.num_draws] * 3


def test_bf16_autocast_and_channels_last_run_and_agree_on_clear_cases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    noise = smoothcore.noise("dssn", sigma=0.2, dim=16)
    x = quantised((4, 1, 4, 4))
    fp32 = smoothcore.SmoothedClassifier(model, noise, 3).certify(x)
    bf16 = smoothcore.SmoothedClassifier(model, noise, 3, precision="bf16", channels_last=True).certify(x)
    assert bf16.counts.sum(1).tolist() == fp32.counts.sum(1).tolist()
    assert (bf16.counts - fp32.counts).abs().sum() <= 0.1 * fp32.counts.sum()


def test_images_retired_by_early_decisions_make_room_for_new_ones():
    """Images decide at different times; the room they leave goes to waiting images, so forward batches stay
    (nearly) full, and every image's counts and draws done equal those of enumerating it alone."""
    torch.manual_seed(0)
    noise = smoothcore.noise(
        "dssn", sigma=0.3, dim=16
    )  # 265 draws: 17 per step between the 16 decision points
    x = quantised((40, 1, 4, 4), seed=5)
    spy = Spy()
    with torch.no_grad():
        spy.head.weight.copy_(torch.tensor([[8.0], [0.0], [-8.0]]))
        spy.head.bias.copy_(torch.tensor([-3.0, 0.0, 5.0]))

    def rule(c, d):  # decides some images early, some late, some never
        return (c[:, 0] > 0.9 * d) | (c[:, 2] > 0.9 * d)

    alone, alone_done = Engine(spy, 3, max_batch=17).exact_counts(
        noise, x, stop_when=rule
    )  # one image at a time
    spy.sizes.clear()
    counts, done = Engine(spy, 3, max_batch=170).exact_counts(
        noise, x, stop_when=rule
    )  # cohorts of 10 images
    assert torch.equal(counts, alone) and torch.equal(done, alone_done)
    assert 0 < int((done < noise.num_draws).sum()) < 40  # some images stopped early, not all
    assert max(spy.sizes) <= 170
    # full while images wait (without the refill, the images retired from a cohort left its batches mostly empty);
    # then only the slow images remain, for at most the 16 steps of one enumeration
    assert spy.sizes[:6] == [170] * 6
    assert len(spy.sizes) <= -(-sum(spy.sizes) // 170) + 16


def test_devices_this_machine_lacks_or_that_do_not_exist_are_clean_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        Engine(model, 3, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Engine(model, 3, device="cuda")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            smoothcore.noise("dssn", sigma=0.2, dim=16, device="cuda:1")
    assert Engine(model, 3, device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_monte_carlo_counts_are_those_of_the_streams_blocks_whatever_the_grouping():
    """Property: for random batch sizes, draw counts and stream positions, the engine's counts equal those of the
    documented stream, rebuilt independently of the engine (tests/test_streams.py) and classified draw by draw."""
    import random

    from tests.test_streams import stream_draws

    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    torch.manual_seed(1)
    noise = smoothcore.noise("gaussian", sigma=0.4, dim=6, seed=7)
    rng = random.Random(0)
    for _ in range(12):
        images = rng.randint(1, 4)
        x = torch.rand(images, 6)
        start, num = rng.randint(0, 192), rng.randint(1, 256)
        streams = [DrawStream(noise.seed, i) for i in range(images)]
        for s in streams:
            s.position = start
        engine = Engine(model, 3, max_batch=rng.randint(1, 300))
        counts = engine.sampled_counts(noise, x, num, streams)
        assert all(s.position == start + num for s in streams)
        expected = torch.zeros(images, 3, dtype=torch.long)
        for i in range(images):
            for draw in stream_draws(noise, x[i], i, start + num)[start:]:
                expected[i, int(model(draw[None]).argmax())] += 1
        assert torch.equal(counts, expected)


def test_auto_max_batch_is_measured_once_and_a_per_call_batch_size_still_bounds_its_call(monkeypatch):
    import smoothcore.engine as engine_module

    monkeypatch.setattr(engine_module, "auto_max_batch", lambda model, shape, device: 4096)  # as a GPU might
    spy = Spy()
    engine = Engine(spy, 3, max_batch="auto")
    noise = smoothcore.noise("uniform", sigma=0.3, dim=16)
    x = quantised((2, 1, 4, 4))
    with engine.batch_size(8):
        engine.sampled_counts(noise, x, 300, [DrawStream(0, i) for i in range(2)])
    # the probe's forward passes (random images, at least 128 each) come first; all 600 noisy images of the call
    # went through passes of at most 8
    assert min(spy.sizes) == 8 and sum(size for size in spy.sizes if size <= 8) == 600
    assert engine.max_batch == 4096  # the measurement outlives the call that made it
    spy.sizes.clear()
    engine.sampled_counts(noise, x, 300, [DrawStream(0, i) for i in range(2)])
    assert sum(spy.sizes) == 600  # measured once: no second probe


class Switchable(nn.Module):
    """A model whose own train() switches a behaviour that its forward reads (as some wrappers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.stochastic = True

    def train(self, mode: bool = True):
        self.stochastic = mode
        return super().train(mode)

    def forward(self, x):
        x = x.flatten(1)
        return self.head(x + torch.randn_like(x) if self.stochastic else x)


def test_models_that_override_train_are_switched_through_it_and_restored():
    model = Switchable().train()
    smoothed = smoothcore.SmoothedClassifier(model, smoothcore.noise("dssn", sigma=0.2, dim=16), 3)
    x = quantised((2, 1, 4, 4))
    assert torch.equal(smoothed.certify(x).counts, smoothed.certify(x).counts)
    assert model.training and model.stochastic
