"""The certification engine: evaluates the base classifier on batches of (images x draws) and counts classes.

It owns batching, devices, precision and the forward-pass budget; noises only produce draws. Every forward batch
holds at most ``max_batch`` noisy images, whatever the number of draws, so peak memory does not grow with it.
Counts are accumulated on the model's device; nothing is copied to the host until the caller asks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from smoothcore.checks import is_int
from smoothcore.devices import resolve_device
from smoothcore.errors import ConfigError, DataError, PluginError, SmoothcoreError
from smoothcore.noises import ExactNoise, Noise
from smoothcore.streams import DRAW_BLOCK, DrawStream
from smoothcore.tuning import Choice, Tuner, architecture, set_layout

MAX_BATCH = 1 << 20  # a million noisy images per forward pass is beyond any device's memory
DECISION_POINTS = 16  # early decisions: how often per image an exact enumeration asks whether it is decided
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Stop glibc from handing large freed blocks back to the kernel (and faulting them in again on the next batch).

    CPU inference allocates and frees the same few large tensors for every batch; with glibc's defaults each of them
    is an ``mmap``/``munmap`` pair and a page fault per 4 KiB. On this project's 2-core machine that doubled the wall
    time of certification and training (benchmarks/RESULTS.md). This sets ``M_MMAP_MAX = 0`` and a 1 GiB
    ``M_TRIM_THRESHOLD`` once per process, so freed memory is reused; the cost is that the process keeps its peak
    heap. Linux/glibc only; set ``SMOOTHCORE_MALLOC_TUNING=0`` to leave the allocator alone. Returns whether it applied.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import os
    import sys

    if os.environ.get("SMOOTHCORE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def auto_max_batch(
    model: nn.Module,
    image_shape: Sequence[int],
    device: torch.device | str,
    *,
    fraction: float = 0.6,
    cap: int = 16384,
    cpu_default: int = 1024,
) -> int:
    """A forward-batch size that fits the device: on CUDA, measured from the peak memory of a probe batch and a
    ``fraction`` of the free memory; on the CPU, ``cpu_default``."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_default
    probe = 64
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        model.to(device).eval()(torch.zeros(probe, *image_shape, device=device))
    per_image = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(cap, fraction * free // (3 * per_image))))  # draws, activations and slack


def exact_chunk(num_draws: int, max_batch: int, decision_points: int | None = None) -> int:
    """Draws per image in one forward batch of an exact enumeration: all of them if they fit in ``max_batch``, and
    at most ``num_draws / decision_points`` when early decisions are consulted in between."""
    chunk = min(num_draws, max_batch)
    if decision_points:
        chunk = min(chunk, max(1, -(-num_draws // decision_points)))
    return chunk


def check_batch(size: object, name: str = "batch_size") -> int:
    if not is_int(size) or not 1 <= size <= MAX_BATCH:
        raise ConfigError(f"{name} must be an integer in [1, {MAX_BATCH:,}], got {size!r}")
    return int(size)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc))
    )


def plugin_of(component: object) -> str:
    """The plugin a noise or certificate came from (set when the registry built it), else its module."""
    return getattr(component, "_smoothcore_plugin", None) or type(component).__module__


class Engine:
    """Forward passes of ``model`` (``[0, 1]`` images -> logits) over noisy draws, counted per image.

    ``max_batch``: most noisy images in one forward pass, or ``"auto"``: on the first images, the batch and memory
    layout that run fastest (a timed probe, :mod:`smoothcore.tuning`; on CUDA bounded by the model's memory and the
    free memory). ``channels_last``: True or False fixes the layout; None (the default) lets ``"auto"`` choose it,
    else the default layout. ``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N``
    (default: where the model's parameters are); the model is moved there in place. Each evaluation runs the model
    in eval mode and restores its modules' modes afterwards. ``precision``: ``fp32`` or autocast ``bf16``/``fp16``
    (the certificate is then for the classifier as evaluated in that precision). ``forward_passes`` counts the
    noisy images evaluated so far.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        max_batch: int | str = 1024,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        channels_last: bool | None = None,
        compile: bool = False,
    ) -> None:
        self._auto_batch = isinstance(max_batch, str) and max_batch == "auto"
        if self._auto_batch:
            max_batch = 1024  # until the first images arrive: then measured for their shape (see _fit_batch)
        check_batch(max_batch, "max_batch")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if not is_int(num_classes) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"the model must be a torch.nn.Module, got {type(model).__name__}",
                hint="wrap a function in an nn.Module whose forward calls it",
            )
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        # moved in place (as nn.Module.to does), but its train/eval mode is the caller's: every evaluation switches
        # to eval mode for its duration only (see `evaluating`)
        self.model = model.to(self.device)
        self._layout_given = None if channels_last is None else bool(channels_last)
        if channels_last:
            self.model = set_layout(self.model, True)
        self.forward = torch.compile(self.model) if compile else self.model
        self.compiled = bool(compile)
        self.tuning: Choice | None = None  # what max_batch="auto" chose (forward batch, layout), once probed
        self.num_classes = int(num_classes)
        self._default_batch = int(max_batch)
        self._override_batch: int | None = None  # a per-call batch_size (see batch_size)
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.forward_passes = 0
        self._nonfinite_logits = torch.zeros((), dtype=torch.bool, device=self.device)
        self._nonfinite_draws = torch.zeros((), dtype=torch.bool, device=self.device)
        self._check_draws = True

    # -- checks that cost no host synchronisation until the end of a call ---------------------------------------
    def _start_checks(self, noise: Noise) -> None:
        self._nonfinite_logits.zero_()
        self._nonfinite_draws.zero_()
        # noises whose draws are finite by construction say so (finite images are checked on input)
        self._check_draws = not getattr(noise, "finite_draws", False)

    def finish_checks(self, noise: Noise) -> None:
        """Raise if any draw or logit since the last counts call was NaN or infinite (one host sync)."""
        if bool(self._nonfinite_draws):
            raise PluginError(
                f"noise {noise.name!r} (plugin {plugin_of(noise)!r}) produced NaN or infinite draws"
            )
        if bool(self._nonfinite_logits):
            raise ConfigError(
                "the classifier returned NaN or infinite logits on some noisy images: no certificate can "
                "be given",
                hint="check the checkpoint (and --precision fp16, which can overflow)",
            )

    def _drawn(
        self,
        noise: Noise,
        make: Callable[..., torch.Tensor],
        args: tuple,
        shape: tuple[int, ...],
        images: int,
    ) -> torch.Tensor:
        """Draws from a (possibly third-party) noise, checked: errors and garbage name the plugin."""
        try:
            out = make(*args)
        except SmoothcoreError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise self._oom(images) from None
            raise PluginError(
                f"noise {noise.name!r} (plugin {plugin_of(noise)!r}) failed to draw: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise PluginError(
                f"noise {noise.name!r} (plugin {plugin_of(noise)!r}) returned draws of shape {got}, "
                f"expected {tuple(shape)}"
            )
        if self._check_draws and out.is_floating_point():
            self._nonfinite_draws |= ~torch.isfinite(out).all()
        return out

    def _oom(self, batch: int) -> ConfigError:
        return ConfigError(
            f"out of memory on {self.device} at a forward batch of {batch:,} noisy images",
            hint="lower --max-batch (or use --max-batch auto on a GPU)",
        )

    @property
    def max_batch(self) -> int:
        """Most noisy images per forward pass now: a per-call ``batch_size`` if one is active, else the engine's."""
        return self._override_batch if self._override_batch is not None else self._default_batch

    @max_batch.setter
    def max_batch(self, size: int) -> None:
        self._default_batch = check_batch(size, "max_batch")
        self._auto_batch = False

    @contextlib.contextmanager
    def batch_size(self, size: int | None):
        """Within the block, forward batches hold at most ``size`` noisy images (``None``: ``max_batch``)."""
        if size is None:
            yield
            return
        old, self._override_batch = self._override_batch, check_batch(size)
        try:
            yield
        finally:
            self._override_batch = old

    def _fit_batch(self, x: torch.Tensor) -> None:
        if self._auto_batch:
            self.fit(tuple(x.shape[1:]))

    def fit(self, image_shape: Sequence[int]) -> int:
        """``max_batch="auto"``, for images of ``image_shape``, once: the batch bound (measured from the free memory
        on CUDA, 1024 on the CPU), then the forward batch and, unless given, the layout that a timed probe finds
        fastest (:mod:`smoothcore.tuning`; a per-call ``batch_size`` still bounds the call it is given to). A
        compiled model is not probed (each forward shape would compile again). Returns the bound."""
        if not self._auto_batch:
            return self.max_batch
        self._auto_batch = False
        shape = tuple(int(s) for s in image_shape)
        with self.evaluating():
            self._default_batch = auto_max_batch(self.model, shape, self.device)
            if not self.compiled:
                key = (
                    architecture(self.model),
                    shape,
                    str(self.device),
                    self.precision,
                    self._layout_given,
                    self._default_batch,
                )
                tuner = Tuner(
                    self._default_batch,
                    image_dims=len(shape),
                    channels_last=self._layout_given,
                    gpu=self.device.type == "cuda",
                    key=key,
                )
                self._probe(tuner, shape)
                self.tuning = tuner.chosen
                self.channels_last = self.tuning.channels_last
                set_layout(self.model, self.channels_last)
        return self._default_batch

    @torch.inference_mode()
    def _probe(self, tuner: Tuner, shape: tuple[int, ...]) -> None:
        """Time forward passes of random images as the tuner asks, until it has chosen."""
        inputs: dict[int, torch.Tensor] = {}
        while not tuner.done:
            layout, size = tuner.current()
            set_layout(self.model, layout)
            if size not in inputs:
                inputs[size] = torch.rand(size, *shape, device=self.device)
            x = inputs[size]
            t0 = time.perf_counter()
            # converted inside the timing, as classify converts each batch of draws
            if layout and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                self.forward(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            tuner.observe(size, time.perf_counter() - t0)

    @contextlib.contextmanager
    def evaluating(self):
        """The model in eval mode within the block (dropout off, batch-norm running statistics used and left
        untouched), its modules' own modes restored afterwards: a model certified between training epochs goes
        on training as it was."""
        modes = [(m, m.training) for m in self.model.modules()]
        if not any(training for _, training in modes):  # the usual case: nothing to switch
            yield
            return
        self.model.train(False)  # through train(), so that modules overriding it see the switch
        try:
            yield
        finally:
            # each module's own mode, set parents first (train(mode) recurses into children, which come later)
            for m, training in modes:
                m.train(training)

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """Top class of each image of ``batch`` ``(N, *image)`` -> ``(N,)`` int64 on the device (in forward passes
        of the probed forward batch, with ``max_batch="auto"``)."""
        size = self.tuning.forward_batch if self.tuning is not None else len(batch)
        if len(batch) <= size:
            return self._classify(batch, self.channels_last)
        return torch.cat(
            [self._classify(batch[i : i + size], self.channels_last) for i in range(0, len(batch), size)]
        )

    def _classify(self, batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        try:
            with self._autocast(), self.evaluating():
                logits = self.forward(batch)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise self._oom(batch.shape[0]) from None
            weights = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
            if weights is not None and batch.is_floating_point() and batch.dtype != weights:
                raise DataError(
                    f"the model's weights are {weights} but the images are {batch.dtype}",
                    hint="pass float32 images (x.float()); the precision option (bf16, fp16) runs the model in "
                    "half precision by autocast",
                ) from exc
            # most often images of the wrong shape for the model (a missing batch or channel axis); chained, so
            # that a genuine bug in a model keeps its traceback in Python
            raise DataError(
                f"the model could not evaluate noisy images of shape {tuple(batch.shape[1:])}: "
                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}",
                hint="images are (batch, *image) in the layout the model expects, e.g. (batch, channels, height, width)",
            ) from exc
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            if not isinstance(logits, torch.Tensor):
                raise ConfigError(f"the model returned {type(logits).__name__}, not a tensor of logits")
            raise ConfigError(
                f"the model returned logits of shape {tuple(logits.shape)}, expected (batch, {self.num_classes})"
            )
        self.forward_passes += batch.shape[0]
        if logits.is_floating_point():
            self._nonfinite_logits |= ~torch.isfinite(logits).all()
        return logits.argmax(dim=1)

    def _count(self, counts: torch.Tensor, rows: torch.Tensor, classes: torch.Tensor) -> None:
        counts.index_put_((rows, classes), torch.ones_like(classes), accumulate=True)

    @torch.inference_mode()
    def exact_counts(
        self,
        noise: ExactNoise,
        x: torch.Tensor,
        stop_when: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        decision_points: int = DECISION_POINTS,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts over draws ``0 .. num_draws - 1`` of every image: ``(batch, classes)`` int64 on the device.

        ``stop_when(counts, draws_done) -> bool (batch,)`` may end an image's enumeration early (its verdicts are
        decided); it is consulted after every ``num_draws / decision_points`` draws. Returns ``(counts, draws_done)``,
        draws_done ``(batch,)``.
        """
        x = x.to(self.device)
        self._fit_batch(x)
        self._start_checks(noise)
        total = noise.num_draws
        chunk = exact_chunk(total, self.max_batch, decision_points if stop_when is not None else None)
        group = max(1, self.max_batch // chunk)
        counts = torch.zeros(x.shape[0], self.num_classes, dtype=torch.long, device=self.device)
        done = torch.zeros(x.shape[0], dtype=torch.long, device=self.device)
        # Images go through in cohorts, each at one position of the enumeration (noise.draws takes one range per
        # call); a forward batch holds every live cohort's next chunk. When early decisions retire images, the room
        # they leave is given to new images at once, so the batches stay full. Index tensors live on the device (a
        # host-to-device copy per batch would synchronise the stream); the host waits only at decision points.
        order = torch.arange(x.shape[0], device=self.device)
        admitted = 0
        cohorts: list[tuple[torch.Tensor, int]] = []  # (images, draws done), sizes known on the host
        while admitted < x.shape[0] or cohorts:
            room = group - sum(images.numel() for images, _ in cohorts)
            if room > 0 and admitted < x.shape[0]:
                cohorts.append((order[admitted : admitted + room], 0))
                admitted = min(admitted + room, x.shape[0])
            parts, spans = [], []
            for images, start in cohorts:
                stop = min(start + chunk, total)
                xs = x.index_select(0, images)
                draws = self._drawn(
                    noise,
                    noise.draws,
                    (xs, start, stop),
                    (xs.shape[0], stop - start, *x.shape[1:]),
                    xs.shape[0] * (stop - start),
                )
                parts.append(draws.flatten(0, 1))
                spans.append(stop - start)
            classes = self.classify(parts[0] if len(parts) == 1 else torch.cat(parts))
            offset, live = 0, []
            for (images, start), k in zip(cohorts, spans):
                self._count(
                    counts, images.repeat_interleave(k), classes[offset : offset + images.numel() * k]
                )
                offset += images.numel() * k
                stop = start + k
                done.index_fill_(0, images, stop)
                if stop >= total:
                    continue
                if stop_when is not None:
                    decided = torch.as_tensor(
                        stop_when(counts.index_select(0, images), stop), device=self.device
                    )
                    images = images[~decided]
                    if not images.numel():
                        continue
                live.append((images, stop))
            cohorts = live
        self.finish_checks(noise)
        return counts, done.cpu()

    @torch.inference_mode()
    def sampled_counts(
        self, noise: Noise, x: torch.Tensor, num: int, streams: Sequence[DrawStream]
    ) -> torch.Tensor:
        """Counts over the next ``num`` random draws of each image, image ``i`` drawing from ``streams[i]`` (whose
        position advances by ``num``): ``(batch, classes)`` int64 on the device.

        Draws are generated a block of the stream at a time (see :class:`DrawStream`) and evaluated in forward
        batches of exactly ``max_batch`` noisy images (the last one smaller), so the result depends neither on the
        batch size nor on which other images share a batch.
        """
        if not is_int(num) or num < 1:
            raise ConfigError(f"the number of draws must be a positive integer, got {num!r}")
        if len(streams) != x.shape[0]:
            raise ConfigError(f"got {len(streams)} draw streams for {x.shape[0]} images")
        x = x.to(self.device)
        self._fit_batch(x)
        self._start_checks(noise)
        counts = torch.zeros(x.shape[0], self.num_classes, dtype=torch.long, device=self.device)
        generator = torch.Generator(device=self.device)
        shape = (DRAW_BLOCK, *x.shape[1:])
        noisy: list[torch.Tensor] = []
        rows: list[torch.Tensor] = []
        held = 0

        def evaluate(upto: int) -> None:  # forward the first `upto` noisy images held, keep the rest
            nonlocal noisy, rows, held
            batch, owner = torch.cat(noisy), torch.cat(rows)
            for a in range(0, upto, self.max_batch):
                b = min(a + self.max_batch, upto)
                self._count(counts, owner[a:b], self.classify(batch[a:b]))
            noisy, rows, held = ([batch[upto:]], [owner[upto:]], held - upto) if upto < held else ([], [], 0)

        for i, stream in enumerate(streams):
            start, stop = stream.position, stream.position + int(num)
            image = x[i].unsqueeze(0).expand(shape)
            image_rows = torch.full(
                (DRAW_BLOCK,), i, dtype=torch.long, device=self.device
            )  # sliced, not refilled
            for block in range(start // DRAW_BLOCK, (stop - 1) // DRAW_BLOCK + 1):
                lo = max(start - block * DRAW_BLOCK, 0)
                hi = min(stop - block * DRAW_BLOCK, DRAW_BLOCK)
                generator.manual_seed(stream.block_seed(block))
                draws = self._drawn(noise, noise.sample, (image, generator), shape, DRAW_BLOCK)
                noisy.append(draws[lo:hi])
                rows.append(image_rows[: hi - lo])
                held += hi - lo
                if held >= self.max_batch:
                    evaluate(held - held % self.max_batch)
        for stream in streams:
            stream.position += int(num)
        if held:
            evaluate(held)
        self.finish_checks(noise)
        return counts
