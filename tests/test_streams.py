"""The Monte-Carlo draw streams, checked against an independent rebuild of their documented seeding.

The expectations here never call the engine's stream helpers (``DrawStream``, ``block_seed``, ``image_stream``):
they rebuild each image's draws from the seeding that ``smoothcore.streams.DrawStream`` documents (SeedSequence of
the noise seed and the dataset index, SplitMix64 of ``base + block``, blocks of 64 draws) and observe what the
engine evaluated through a model that records its inputs. So a stream bug that the engine's own helpers share (a
block seed that ignores the block number, estimation reusing the selection draws, a top class taken from the
estimation counts) fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta
from torch import nn

import smoothcore
from smoothcore import SmoothedClassifier

BLOCK = 64  # draws per block, as documented
MASK64 = (1 << 64) - 1


def splitmix64(state: int) -> int:
    """One output of SplitMix64 (Steele, Lea & Flood 2014) from ``state``."""
    z = (state + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream_draws(noise, image: torch.Tensor, index: int, stop: int) -> torch.Tensor:
    """Draws ``0 .. stop-1`` of the stream of dataset image ``index`` under ``noise.seed``: ``(stop, *image)``."""
    s0, s1 = np.random.SeedSequence([noise.seed, index]).generate_state(2, np.uint32)
    base = (int(s0) << 32) | int(s1)
    blocks = []
    for block in range(-(-stop // BLOCK)):
        g = torch.Generator().manual_seed(splitmix64((base + block) & MASK64))
        blocks.append(noise.sample(image.unsqueeze(0).expand(BLOCK, *image.shape), g))
    return torch.cat(blocks)[:stop]


class Recorder(nn.Module):
    """Records every noisy image it evaluates; its class is the bin of the first pixel among ``edges``."""

    def __init__(self, edges: list[float]) -> None:
        super().__init__()
        self.edges = torch.tensor(edges)
        self.seen: list[torch.Tensor] = []

    def classes(self, z: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(z.reshape(len(z), -1)[:, 0].contiguous(), self.edges)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.seen.append(z.detach().clone())
        return nn.functional.one_hot(self.classes(z), len(self.edges) + 1).float() * 10.0

    def drawn(self) -> torch.Tensor:
        return torch.cat(self.seen)


def counts_of(model: Recorder, draws: torch.Tensor) -> torch.Tensor:
    return torch.bincount(model.classes(draws), minlength=len(model.edges) + 1)


def test_the_rebuild_uses_splitmix64_as_published():
    """The first outputs of SplitMix64 seeded with 0 (the reference values of the published generator)."""
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


@pytest.mark.parametrize("seed, index", [(0, 0), (1, 7), (2**32 - 1, 123_456)])
def test_certification_evaluates_exactly_the_documented_draws_in_stream_order(seed, index):
    noise = smoothcore.noise("uniform", sigma=0.3, dim=6, seed=seed)
    x = torch.rand(1, 6, generator=torch.Generator().manual_seed(seed % 1000))
    model = Recorder([0.5])
    SmoothedClassifier(model, noise, 2, max_batch=50).certify(x, n0=40, n=150, indices=[index])
    assert torch.equal(model.drawn(), stream_draws(noise, x[0], index, 190))


@pytest.mark.parametrize("seed", [*range(10), 2**31, 2**32 - 1])
def test_no_draw_of_an_image_stream_repeats_so_blocks_and_selection_and_estimation_are_distinct(seed):
    """Every block of a stream is drawn from its own seed: a block seed that ignored the block number would
    repeat the draws every 64, and estimation that reused the selection draws would repeat them too. Checked
    for every noise seed, on the draws the engine actually evaluated."""
    noise = smoothcore.noise("uniform", sigma=0.3, dim=4, seed=seed)
    model = Recorder([0.5])
    SmoothedClassifier(model, noise, 2, max_batch=256).certify(
        torch.full((1, 4), 0.5), n0=64, n=5 * BLOCK, indices=[3]
    )
    drawn = model.drawn()
    assert len(drawn) == 6 * BLOCK
    assert torch.unique(drawn, dim=0).shape[0] == len(drawn)


def disagreeing_stream(noise, image: torch.Tensor, n0: int, n: int) -> tuple[int, float]:
    """A dataset index and a threshold ``t`` for which class 1 (first pixel above ``t``) has the majority of the
    ``n0`` selection draws and class 0 that of the ``n`` estimation draws, found from the rebuilt stream."""
    for index in range(200):
        z = stream_draws(noise, image, index, n0 + n)[:, 0].double()
        selection, estimation = z[:n0], z[n0:]
        for t in torch.sort(z).values.tolist():
            if int((selection > t).sum()) > n0 / 2 and int((estimation > t).sum()) < n / 2:
                return index, t
    raise AssertionError("no stream found whose selection and estimation majorities disagree")


def test_the_top_class_comes_from_the_n0_selection_draws():
    """Cohen et al.: A is the majority of the selection draws, and p_lower bounds A's share of the estimation
    draws, even when another class has the majority there."""
    noise = smoothcore.noise("uniform", lambd=0.5, dim=1, seed=5)
    image = torch.full((1,), 0.5)
    n0, n, alpha = 64, 64, 0.001
    index, t = disagreeing_stream(noise, image, n0, n)
    model = Recorder([t])
    expected = counts_of(model, stream_draws(noise, image, index, n0 + n)[n0:])
    assert expected[1] < expected[0]  # the estimation majority is class 0; the selection chose class 1
    result = SmoothedClassifier(model, noise, 2).certify(
        image[None], n0=n0, n=n, alpha=alpha, indices=[index]
    )
    k = int(expected[1])
    assert result.p_lower[0].item() == pytest.approx(beta.ppf(alpha / 2, k, n - k + 1), rel=1e-12)
    assert result.prediction.tolist() == [-1]  # p_lower < 1/2: abstain


def test_the_estimation_counts_are_those_of_the_next_n_draws_of_each_image_stream():
    """Images keyed by dataset indices: counts over draws n0 .. n0+n-1 of each image's own stream, which are not
    the counts of its first n draws (the selection draws and their continuation)."""
    noise = smoothcore.noise("uniform", lambd=0.5, dim=3, seed=11)
    x = torch.rand(3, 3, generator=torch.Generator().manual_seed(2)) * 0.2 + 0.4
    indices, n0, n = [3, 17, 4242], 40, 100
    model = Recorder([0.3, 0.5, 0.7])
    result = SmoothedClassifier(model, noise, 4, max_batch=96).certify(x, n0=n0, n=n, indices=indices)
    for i, index in enumerate(indices):
        draws = stream_draws(noise, x[i], index, n0 + n)
        expected = counts_of(model, draws[n0:])
        assert torch.equal(result.counts[i], expected), i
        assert not torch.equal(counts_of(model, draws[:n]), expected), "the test must tell the two apart"
