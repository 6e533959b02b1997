"""--max-batch auto: the forward batch and memory layout are those that ran fastest on the first batches."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import smoothcore
from smoothcore.engine import Engine
from smoothcore.streams import DrawStream
from smoothcore.tuning import FIRST_BATCH, Tuner
from tests.conftest import quantised


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    """Each test probes afresh: choices are remembered per architecture for the whole process otherwise."""
    import smoothcore.tuning

    monkeypatch.setattr(smoothcore.tuning, "_CHOSEN", {})


class Timed(nn.Module):
    """A conv model whose forward takes ``cost(batch size, input is channels-last)`` seconds (a sleep, so that the
    choice follows from the costs, not from this machine's load); it records every forward batch."""

    def __init__(self, cost, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, classes)
        self.cost = cost
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        time.sleep(self.cost(x.shape[0], channels_last))
        return self.head(self.conv(x).mean((2, 3)))


def drive(tuner: Tuner, cost) -> None:
    """Feed the tuner forward passes of the sizes it asks for, costing ``cost(size, layout)``, until it chooses."""
    for _ in range(1000):
        if tuner.done:
            return
        layout, size = tuner.current()
        tuner.observe(size, cost(size, layout))
    raise AssertionError("the tuner never chose")


def test_a_fixed_cost_per_forward_pass_makes_the_whole_batch_fastest():
    tuner = Tuner(1024, image_dims=3, channels_last=False)
    drive(tuner, lambda b, cl: 0.01)
    assert (tuner.chosen.forward_batch, tuner.chosen.channels_last) == (1024, False)
    assert sorted(b for _, b in tuner.rates) == [128, 256, 512, 1024]


def test_throughput_that_falls_past_a_forward_batch_stops_the_search_there():
    """1 ms per forward pass plus 0.01 ms per image up to 256 images, 0.1 ms past them: 256 wins and nothing past
    the fall is tried."""
    tuner = Tuner(4096, image_dims=3, channels_last=False)
    drive(tuner, lambda b, cl: 1e-3 + b * (1e-5 if b <= 256 else 1e-4))
    assert tuner.chosen.forward_batch == 256
    assert max(b for _, b in tuner.rates) == 512


@pytest.mark.parametrize("slow_layout", [True, False])
def test_the_faster_layout_wins_and_only_it_grows_its_forward_batch(slow_layout):
    tuner = Tuner(1024, image_dims=3)
    drive(tuner, lambda b, cl: b * (1e-4 if cl == slow_layout else 1e-5))
    assert tuner.chosen.channels_last is (not slow_layout)
    assert {b for cl, b in tuner.rates if cl == slow_layout} == {FIRST_BATCH}
    assert "(probed: " in tuner.chosen.describe()


def test_the_first_forward_pass_of_a_candidate_is_not_timed():
    """A first call 100x slower (kernel choice, allocation) does not decide anything."""
    tuner = Tuner(256, image_dims=3, channels_last=None)
    seen: set = set()

    def cost(b, cl):
        first = (cl, b) not in seen
        seen.add((cl, b))
        return (1.0 if first else 1e-3) if cl else (1e-2 if not first else 1e-2)

    drive(tuner, cost)
    assert tuner.chosen.channels_last


def test_flat_inputs_and_gpus_have_less_to_choose():
    flat = Tuner(1024, image_dims=1)
    drive(flat, lambda b, cl: 0.001)
    assert {cl for cl, _ in flat.rates} == {False}
    gpu = Tuner(8192, image_dims=3, gpu=True)
    drive(gpu, lambda b, cl: 0.001 if cl else 0.002)
    assert gpu.chosen.forward_batch == 8192 and gpu.chosen.channels_last  # the whole batch; only the layout


@pytest.mark.parametrize("fast_layout", [False, True])
def test_the_engine_probes_once_then_evaluates_the_whole_run_in_the_chosen_settings(fast_layout):
    """The probe runs before the first batch; every real forward pass then uses the chosen forward batch and
    layout, so the counts are exactly those of a fixed engine in that layout."""
    model = Timed(lambda b, cl: b * (1e-5 if cl == fast_layout else 5e-5), classes=3 + fast_layout)
    noise = smoothcore.noise("uniform", sigma=0.5, dim=3 * 8 * 8)
    x = quantised((2, 3, 8, 8))
    engine = Engine(model, 3 + fast_layout, max_batch="auto")
    engine.fit((3, 8, 8))
    chosen = engine.tuning
    assert chosen is not None and chosen.channels_last is fast_layout and engine.max_batch == 1024
    probed = len(model.sizes)
    counts = engine.sampled_counts(noise, x, 3000, [DrawStream(0, i) for i in range(2)])
    real = model.sizes[probed:]
    assert sum(real) == 6000 == engine.forward_passes  # the probe is not counted as certification work
    assert max(real) <= chosen.forward_batch
    fixed = Engine(model, 3 + fast_layout, max_batch=1024, channels_last=fast_layout)
    assert torch.equal(counts, fixed.sampled_counts(noise, x, 3000, [DrawStream(0, i) for i in range(2)]))


def test_channels_last_must_be_clearly_faster_to_be_chosen():
    tuner = Tuner(256, image_dims=3)
    drive(tuner, lambda b, cl: b * (1e-5 if cl else 1.1e-5))  # 10% faster: not enough
    assert not tuner.chosen.channels_last


def test_a_choice_is_reused_by_later_engines_of_the_same_architecture():
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4))

    noise = smoothcore.noise("dssn", sigma=2.0, dim=108)  # 1,020 draws per image
    x = quantised((4, 3, 6, 6))
    first = Engine(net(), 4, max_batch="auto")
    a = first.exact_counts(noise, x)[0]
    assert first.tuning is not None and first.tuning.rates
    second = Engine(net(), 4, max_batch="auto")  # other weights, same architecture
    second.fit((3, 6, 6))
    assert second.tuning is first.tuning  # known before a single forward pass
    b = Engine(first.model, 4, max_batch=1024, channels_last=False).exact_counts(noise, x)[0]
    assert torch.equal(a, b)


def test_smoothed_classifier_certifies_with_max_batch_auto():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    smoothed = smoothcore.SmoothedClassifier(
        net, smoothcore.noise("dssn", sigma=0.25, dim=108), 3, max_batch="auto"
    )
    result = smoothed.certify(quantised((2, 3, 6, 6)))
    assert len(result.prediction) == 2 and smoothed.engine.max_batch == 1024


def test_a_model_probed_inside_inference_mode_still_takes_gradients():
    """The engine probes within its counting calls (inference mode); a layout switch there must not leave weights
    that autograd refuses (the attacks differentiate the same model afterwards)."""
    model = Timed(
        lambda b, cl: b * (1e-5 if cl else 5e-5)
    )  # channels-last is chosen: the weights are converted
    engine = Engine(model, 3, max_batch="auto")
    engine.sampled_counts(
        smoothcore.noise("uniform", sigma=0.5, dim=192), quantised((1, 3, 8, 8)), 10, [DrawStream(0, 0)]
    )
    assert engine.tuning.channels_last and model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    z = torch.rand(2, 3, 8, 8, requires_grad=True)
    model(z).sum().backward()
    assert z.grad is not None and model.conv.weight.grad is not None
