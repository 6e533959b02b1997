"""The Monte-Carlo draw streams: every image's random draws, keyed by the noise's seed and the image's dataset
index, so that a certification's result does not depend on batching, sharding or resuming (see
:class:`DrawStream` for the exact seeding; tests/test_streams.py rebuilds it independently)."""

from __future__ import annotations

import numpy as np

DRAW_BLOCK = 64  # random draws per block of an image's stream (see DrawStream); n0 = 64 fills block 0 exactly
_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class DrawStream:
    """The Monte-Carlo draws of one image, keyed by integers (the noise's seed and the image's dataset index).

    Draw ``j`` belongs to block ``j // DRAW_BLOCK``, and each block is drawn in one call from a generator seeded
    from the keys and the block number alone. So an image's draws do not depend on how they are grouped into
    calls and forward batches (``max_batch``, ``--max-batch auto``, the other images of a batch), nor on sharding or
    resuming; on CUDA too, where a generator's position after a call depends on the call's size. ``position``:
    the next draw; ``sampled_counts`` advances it, so selection and estimation draws follow one another.

    The seeding, exactly (tests/test_streams.py rebuilds it from this description):
    ``s0, s1 = numpy.random.SeedSequence([key & 0xFFFFFFFF for key in keys]).generate_state(2, numpy.uint32)``,
    ``base = (s0 << 32) | s1``; block ``b`` is drawn by ``noise.sample(x.expand(DRAW_BLOCK, *image), g)`` with
    ``g = torch.Generator(device).manual_seed(splitmix64((base + b) mod 2^64))`` (one step of SplitMix64, Steele,
    Lea & Flood 2014: add 0x9E3779B97F4A7C15, then xor-shift-multiply), and draw ``j`` is row ``j mod DRAW_BLOCK`` of block
    ``j // DRAW_BLOCK``. Certification takes the ``n0`` selection draws ``0 .. n0-1`` and then the ``n``
    estimation draws ``n0 .. n0+n-1`` of each image's stream ``(noise seed, dataset index)``.
    """

    def __init__(self, *keys: int) -> None:
        state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint32)
        self.base = (int(state[0]) << 32) | int(state[1])
        self.position = 0

    def block_seed(self, block: int) -> int:
        return _splitmix64((self.base + block) & _MASK64)


def image_stream(seed: int, index: int) -> DrawStream:
    """The draw stream of image ``index`` under the noise's ``seed``."""
    return DrawStream(seed, index)
