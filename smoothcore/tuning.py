"""``--max-batch auto``: the forward batch and memory layout that evaluate a model fastest, from a short timed probe.

The draws of a certification come in batches of ``max_batch`` noisy images (on a GPU as many as its free memory
holds, 1,024 on the CPU). With ``auto``, the engine evaluates each such batch in forward passes of a *forward
batch* that may be smaller, in the memory layout (default or channels-last) that runs fastest. On a GPU the whole
batch is one forward pass and only the layouts are compared. On the CPU the fastest forward batch is not the largest:
once a batch's activations leave the caches, throughput falls (measured on this project's 2-core machine, small CNN
on 3x32x32 images, images per second: 8,800 at 128 and 7,900 at 1,024 in the default layout; 21,000 at 128 and
16,600 at 1,024 in channels-last; benchmarks/RESULTS.md).

The probe runs the model on random images of the dataset's shape before the first batch, as certification runs it
(eval mode, the precision's autocast): first both layouts at a forward batch of 128, then the better layout at 256,
512, ... up to the whole batch for as long as each doubling is at least 5% faster than the best so far. Each
candidate's first forward pass (kernels chosen, memory allocated) is not timed; then at least 256 images are (in two
passes for smaller forward batches) and the fastest pass counts (on a shared machine, noise only slows a pass down)
(about 0.15 s for the small CNN on CIFAR-sized images on 2 cores). Channels-last is chosen only when it is at least
1.25 times as fast as the default layout, so that a near tie does not switch layouts from run to run. A process
probes each architecture (modules and parameter shapes, not weights) once per image shape, device, precision and
batch bound.

The whole run is evaluated in the chosen settings. They change results only up to floating-point rounding: some
operations (a reduction over the image, a convolution algorithm) round differently in the last bits in another
layout, which can move a draw that sits exactly on a decision boundary, as any change of hardware can. For results
that are bit-for-bit those of another run, give the same ``--max-batch N`` and ``--channels-last`` or
``--no-channels-last`` (the forward batch alone changed no logit in our tests: on the CPU each image of a
convolution is computed alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

FIRST_BATCH = 128  # the layouts are compared at this forward batch (at most the whole batch)
TIMED_IMAGES = 256  # a candidate is timed on at least this many images (two passes unless one holds them all)
LAYOUT_MARGIN = 1.25  # channels-last must be this much faster than the default layout to be chosen
GROWTH = 1.05  # a doubled forward batch must be this much faster than the best so far for the search to go on
_CHOSEN: dict[tuple, Choice] = {}  # per process, see architecture()


@dataclass
class Choice:
    """The forward batch and layout chosen, and the images per second measured for each (layout, forward batch)
    tried (empty when nothing was probed)."""

    forward_batch: int
    channels_last: bool
    rates: dict[tuple[bool, int], float] = field(default_factory=dict)

    def describe(self) -> str:
        layout = "channels-last" if self.channels_last else "default layout"
        best = self.rates.get((self.channels_last, self.forward_batch))
        how = f" (probed: {best:,.0f} images/s)" if best else ""
        return f"forward batches of {self.forward_batch}, {layout}{how}"


def set_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` in place in channels-last or the default (contiguous) memory format. Outside inference mode even when
    called inside it (the engine probes within its counting calls): converted weights made in inference mode could
    not take part in autograd afterwards (attacks, training)."""
    with torch.inference_mode(False):
        return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def architecture(model: nn.Module) -> tuple:
    """What the speed of ``model`` depends on: its modules' types and its parameters' and buffers' shapes."""
    return (
        tuple(type(m).__qualname__ for m in model.modules()),
        tuple((name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items()),
    )


class Tuner:
    """The probe's schedule: which (layout, forward batch) to time next, and the choice once all are timed.

    ``largest``: the engine's batch bound; ``image_dims``: 3 for images (two layouts to compare), else 1;
    ``channels_last``: a layout given (only the forward batch is probed); ``gpu``: the forward batch is the whole
    batch and only the layouts are compared. ``key``: a choice made before for the same key is reused at once.
    """

    def __init__(
        self,
        largest: int,
        *,
        image_dims: int,
        channels_last: bool | None = None,
        gpu: bool = False,
        key: tuple | None = None,
    ) -> None:
        self.largest, self.key, self.rates = int(largest), key, {}
        self.chosen: Choice | None = _CHOSEN.get(key) if key is not None else None
        layouts = (
            [channels_last] if channels_last is not None else ([False, True] if image_dims == 3 else [False])
        )
        first = self.largest if gpu else min(FIRST_BATCH, self.largest)
        self._queue = [(layout, first) for layout in layouts]
        self._grow = not gpu  # after the layouts: larger forward batches in the better one
        self._fastest, self._images, self._calls = 0.0, 0, 0

    @property
    def done(self) -> bool:
        return self.chosen is not None

    def current(self) -> tuple[bool, int]:
        """The (channels_last, forward batch) to evaluate with now."""
        return self.chosen_pair() if self.chosen is not None else self._queue[0]

    def chosen_pair(self) -> tuple[bool, int]:
        assert self.chosen is not None
        return self.chosen.channels_last, self.chosen.forward_batch

    def observe(self, images: int, seconds: float) -> None:
        """One forward pass of ``images`` under :meth:`current` took ``seconds``."""
        if self.chosen is not None:
            return
        self._calls += 1
        if self._calls == 1:  # kernels chosen, memory allocated: not timed
            return
        self._fastest = max(self._fastest, images / max(seconds, 1e-9))  # noise only ever slows a pass down
        self._images += images
        if self._images < TIMED_IMAGES or (self._calls < 3 and images < TIMED_IMAGES):
            return  # at least 256 images timed, in two passes unless one pass held them all
        candidate = self._queue.pop(0)
        rate = self._fastest
        self.rates[candidate] = rate
        self._fastest, self._images, self._calls = 0.0, 0, 0
        if not self._queue:
            self._next(candidate, rate)
        if not self._queue:
            (layout, batch), best = max(self.rates.items(), key=lambda item: item[1])
            default = [(r, b) for (cl, b), r in self.rates.items() if not cl]
            if layout and default and best < LAYOUT_MARGIN * max(default)[0]:
                layout, batch = False, max(default)[1]
            self.chosen = Choice(batch, layout, dict(self.rates))
            if self.key is not None:
                _CHOSEN[self.key] = self.chosen

    def _next(self, last: tuple[bool, int], rate: float) -> None:
        """After the layouts: the better one at twice the forward batch, while that keeps getting faster."""
        if not self._grow:
            return
        layout = max(self.rates.items(), key=lambda item: item[1])[0][0]
        before = [r for key, r in self.rates.items() if key[0] == layout and key != last]
        if last[0] == layout and before and rate < GROWTH * max(before):
            return
        tried = max(b for (cl, b) in self.rates if cl == layout)
        if tried < self.largest:
            self._queue.append((layout, min(2 * tried, self.largest)))
