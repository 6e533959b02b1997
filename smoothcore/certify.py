"""A smoothed classifier g(x) = argmax_c P(f(x + noise) = c), with Cohen et al.'s PREDICT and CERTIFY and the
exact certificate of enumerable noises (DSSN)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest
from torch import nn

from smoothcore.certificates import ABSTAIN, EXACT, Certificate, Certified, Statistics, resolve_certificate
from smoothcore.checks import check_indices, check_radii, is_int
from smoothcore.engine import Engine, plugin_of
from smoothcore.errors import ConfigError, PluginError, SmoothcoreError
from smoothcore.noises import Noise
from smoothcore.streams import DrawStream, image_stream

MAX_DRAWS = 10**9


def run_certificate(cert, noise: Noise, stats: Statistics, batch: int) -> Certified:
    """``cert.certify(noise, stats)``, checked: a certificate (possibly third-party) that raises or returns
    something other than one prediction and one radius per image is an error naming its plugin."""
    where = f"certificate {cert.name!r} (plugin {plugin_of(cert)!r})"
    try:
        out = cert.certify(noise, stats)
    except SmoothcoreError:
        raise
    except Exception as exc:
        raise PluginError(f"{where} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(out, Certified):
        raise PluginError(f"{where} returned {type(out).__name__}, not a Certified")
    for field_name in ("prediction", "radius", "p_lower"):
        value = getattr(out, field_name)
        if value is None and field_name == "p_lower":
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch,):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise PluginError(f"{where} returned {field_name} of shape {got} for {batch} images")
    num_classes = stats.counts.shape[1]
    if bool(((out.prediction < -1) | (out.prediction >= num_classes)).any()):
        raise PluginError(f"{where} returned predictions outside -1..{num_classes - 1}")
    if out.p_lower is not None and bool(((out.p_lower < 0) | (out.p_lower > 1)).any()):
        raise PluginError(f"{where} returned p_lower outside [0, 1]")
    radius = out.radius.double()
    certified = out.prediction != -1
    if bool((radius[certified] < 0).any()) or bool(torch.isnan(radius[certified]).any()):
        raise PluginError(f"{where} returned a negative or NaN radius for a non-abstaining image")
    return out


@dataclass
class CertifyResult:
    """One entry per image. ``prediction``: the smoothed class, ``-1`` where it abstains. ``radius``: certified
    radius in ``norm`` (float64; NaN on abstention). ``counts``: class counts over the draws evaluated: exact
    noises, all of them unless early decisions (``radii``) stopped an image; Monte-Carlo, the estimation draws (not
    the ``n0`` selection draws), so ``p_lower`` can be recomputed at another alpha. ``draws`` says how many.
    ``p_lower``: Monte-Carlo, the lower confidence bound on the top-class probability. ``forward_passes``: the
    base-classifier evaluations spent on the whole batch, ``forward_passes_full`` what full enumeration (or all
    n0 + n draws) would have spent, and ``draws`` the evaluations per image."""

    prediction: torch.Tensor
    radius: torch.Tensor
    norm: str
    certificate: str
    counts: torch.Tensor | None = None
    p_lower: torch.Tensor | None = None
    forward_passes: int = 0
    forward_passes_full: int = 0
    draws: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prediction)

    def to_frame(self) -> pd.DataFrame:
        data: dict[str, Any] = {"prediction": self.prediction.numpy(), "radius": self.radius.numpy()}
        if self.p_lower is not None:
            data["p_lower"] = self.p_lower.numpy()
        if self.counts is not None:
            data["counts"] = [" ".join(map(str, row)) for row in self.counts.tolist()]
        for key, value in self.extra.items():
            data[key] = value.numpy()
        return pd.DataFrame(data)


@dataclass
class PredictResult:
    prediction: torch.Tensor
    counts: torch.Tensor


class SmoothedClassifier:
    """The smoothed version of ``model`` under ``noise``.

    ``model``: an ``nn.Module`` from ``[0, 1]`` images to logits over ``num_classes`` (a denoiser, if any, is part
    of it: see :func:`smoothcore.stack`). Engine options (``max_batch`` (an integer or ``"auto"``), ``device``,
    ``precision``, ``channels_last``, ``compile``) go to :class:`smoothcore.engine.Engine`. The model is evaluated
    in eval mode and left in the mode it was in.
    """

    def __init__(self, model: nn.Module, noise: Noise, num_classes: int, **engine_options: Any) -> None:
        if not isinstance(noise, Noise):
            raise ConfigError(
                f"noise must be a smoothcore Noise (see smoothcore.noises), got {type(noise).__name__}"
            )
        self.noise = noise
        self.num_classes = num_classes
        self.engine = Engine(model, num_classes, **engine_options)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _streams(self, n_images: int, indices) -> list[DrawStream]:
        indices = list(range(n_images)) if indices is None else check_indices(indices, n_images)
        return [image_stream(self.noise.seed, i) for i in indices]

    @staticmethod
    def _check_mc(n0: int, n: int, alpha: float) -> None:
        for name, value in (("n0", n0), ("n", n)):
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value > MAX_DRAWS:
                raise ConfigError(
                    f"{name}={value:,} draws per image is beyond any useful certificate (at most {MAX_DRAWS:,})"
                )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")

    # -- the algorithms --------------------------------------------------------------------------------------
    def predict(
        self,
        x: torch.Tensor,
        *,
        n: int = 1000,
        alpha: float = 0.001,
        indices=None,
        batch_size: int | None = None,
    ) -> PredictResult:
        """Cohen et al.'s PREDICT: the top class of ``n`` draws, or ``-1`` when a two-sided binomial test of its
        count against the runner-up's does not reject equality at level ``alpha``. Exact noises enumerate every
        draw instead and never abstain (ties go to the lowest class index). ``batch_size``: most noisy images per
        forward pass for this call (default: the engine's ``max_batch``); results do not depend on it."""
        with self.engine.batch_size(batch_size):
            return self._predict(x, n=n, alpha=alpha, indices=indices)

    def _predict(self, x: torch.Tensor, *, n: int, alpha: float, indices) -> PredictResult:
        self.noise.check_input(x)
        if self.noise.exact:
            counts, _ = self.engine.exact_counts(self.noise, x)
            return PredictResult(counts.argmax(dim=1).cpu(), counts.cpu())
        self._check_mc(1, n, alpha)
        counts = self.engine.sampled_counts(self.noise, x, n, self._streams(len(x), indices)).cpu()
        a, b = _top_two(counts)
        n_a = counts.gather(1, a.unsqueeze(1)).squeeze(1).tolist()
        n_b = counts.gather(1, b.unsqueeze(1)).squeeze(1).tolist()
        keep = [na > 0 and binomtest(na, na + nb, 0.5).pvalue <= alpha for na, nb in zip(n_a, n_b)]
        prediction = torch.where(torch.tensor(keep, dtype=torch.bool), a, torch.full_like(a, ABSTAIN))
        return PredictResult(prediction, counts)

    def certify(
        self,
        x: torch.Tensor,
        *,
        n0: int = 64,
        n: int = 100_000,
        alpha: float = 0.001,
        indices=None,
        certificate: str | Certificate | None = None,
        radii=None,
        looks: int = 6,
        batch_size: int | None = None,
    ) -> CertifyResult:
        """Certify each image of ``x`` ``(batch, *image)``.

        Exact noises: counts over every draw, then the exact certificate (``n0``, ``n``, ``alpha`` unused).
        Monte-Carlo noises (Cohen et al. CERTIFY): ``n0`` selection draws choose the top class ``A``; ``n``
        independent estimation draws count it; the certificate turns the counts into ``p_lower`` (a two-sided
        Clopper-Pearson bound at ``alpha``) and a radius, abstaining when ``p_lower < 1/2``. With probability at
        least ``1 - alpha`` per image, a non-abstaining prediction is constant within the radius.
        ``certificate``: a registered name (default: ``exact`` for exact noises, else ``standard``) or a certificate
        already resolved (:func:`smoothcore.certificates.resolve_certificate`); refused unless it applies.
        ``indices`` key each image's random stream (with the noise's seed); an image's result then does not depend
        on the batch size, the other images of the call, sharding or resuming. Pass dataset indices: the default
        ``0 .. batch-1`` gives the i-th image of every call the same stream.

        ``radii`` (early decisions): stop evaluating an image once its verdict at each of these radii is decided.
        Exact noises that declare ``early_decisions``: once the remaining draws cannot change the prediction or
        whether the radius reaches each r; the verdicts equal full enumeration's and the radius recorded is the
        smallest the remaining draws could leave (sound). Other exact noises enumerate every draw. Monte-Carlo:
        sequential estimation at ``looks`` pre-planned sample sizes ``n / 2^(looks-1), ..., n / 2, n`` with Bonferroni alpha-spending (``alpha / looks`` per look, valid at overall level
        ``alpha`` by the union bound over the looks whatever the stopping rule; the simplest alpha-spending
        function of group-sequential testing; Jennison & Turnbull 2000, "Group Sequential Methods with
        Applications to Clinical Trials"), stopping once each verdict is decided.

        ``batch_size``: most noisy images per forward pass for this call (default: the engine's ``max_batch``);
        results do not depend on it.
        """
        with self.engine.batch_size(batch_size):
            return self._certify(
                x, n0=n0, n=n, alpha=alpha, indices=indices, certificate=certificate, radii=radii, looks=looks
            )

    def _certify(
        self,
        x: torch.Tensor,
        *,
        n0: int,
        n: int,
        alpha: float,
        indices,
        certificate: str | Certificate | None,
        radii,
        looks: int,
    ) -> CertifyResult:
        self.noise.check_input(x)
        cert = resolve_certificate(self.noise, certificate)
        before = self.engine.forward_passes
        radii = None if radii is None else check_radii(radii)
        if cert.kind == EXACT:
            total = self.noise.num_draws
            stop_when = (
                (lambda counts, done: self.noise.decided(counts, total - done, radii))
                if radii and self.noise.early_decisions
                else None
            )
            counts, done = self.engine.exact_counts(self.noise, x, stop_when=stop_when)
            stats = Statistics(counts=counts.cpu(), num_draws=total, x=x.cpu(), remaining=total - done)
            out = run_certificate(cert, self.noise, stats, len(x))
            draws, full = done, total
        elif radii:
            self._check_mc(n0, n, alpha)
            if cert.name != "standard":
                raise ConfigError(
                    f"early decisions (radii) support the standard certificate only, not {cert.name!r}"
                )
            out, counts, draws = self._certify_sequential(x, n0, n, alpha, radii, looks, indices)
            stats = None
            full = n0 + n
        else:
            self._check_mc(n0, n, alpha)
            streams = self._streams(len(x), indices)
            selection = self.engine.sampled_counts(self.noise, x, n0, streams)
            counts = self.engine.sampled_counts(self.noise, x, n, streams)
            stats = Statistics(
                counts=counts.cpu(), num_draws=n, selection=selection.cpu(), alpha=alpha, x=x.cpu()
            )
            out = run_certificate(cert, self.noise, stats, len(x))
            draws, full = torch.full((len(x),), n0 + n), n0 + n
        return CertifyResult(
            prediction=out.prediction.long(),
            radius=out.radius.double(),
            norm=out.norm,
            certificate=cert.name,
            counts=stats.counts if stats is not None else counts,
            p_lower=out.p_lower,
            forward_passes=self.engine.forward_passes - before,
            forward_passes_full=full * len(x),
            draws=torch.as_tensor(draws).long(),
            extra=out.extra,
        )

    def _certify_sequential(self, x, n0, n, alpha, radii, looks, indices):
        """Sequential Clopper-Pearson with Bonferroni alpha-spending over pre-planned looks (see ``certify``)."""
        from smoothcore.stats import clopper_pearson_lower, clopper_pearson_upper

        if not is_int(looks) or looks < 1:
            raise ConfigError(f"looks must be a positive integer, got {looks!r}")
        schedule = sorted({max(1, -(-n // 2 ** (looks - 1 - i))) for i in range(looks)})
        alpha_look = alpha / len(schedule)
        streams = self._streams(len(x), indices)
        top = self.engine.sampled_counts(self.noise, x, n0, streams).argmax(dim=1).cpu()
        counts = torch.zeros(len(x), self.num_classes, dtype=torch.long)
        done = torch.zeros(len(x), dtype=torch.long)
        p_lower = torch.zeros(len(x), dtype=torch.float64)
        active = torch.arange(len(x))
        for size in schedule:
            extra = size - int(done[active[0]]) if len(active) else 0
            if not len(active) or extra <= 0:
                continue
            counts[active] += self.engine.sampled_counts(
                self.noise, x[active], extra, [streams[i] for i in active.tolist()]
            ).cpu()
            done[active] = size
            k = counts[active].gather(1, top[active].unsqueeze(1)).squeeze(1).numpy()
            low = np.atleast_1d(clopper_pearson_lower(k, size, alpha_look))
            high = np.atleast_1d(clopper_pearson_upper(k, size, alpha_look))
            p_lower[active] = torch.from_numpy(low)
            r_low = np.where(low >= 0.5, np.asarray(self.noise.radius(low), dtype=np.float64), -np.inf)
            r_high = np.where(high >= 0.5, np.asarray(self.noise.radius(high), dtype=np.float64), -np.inf)
            decided = np.ones(len(active), dtype=bool)
            for r in radii:
                decided &= (r_low >= r) == (r_high >= r)
            decided &= (low >= 0.5) == (high >= 0.5)
            active = active[~torch.from_numpy(decided)]
        certified = p_lower >= 0.5
        prediction = torch.where(certified, top, torch.full_like(top, ABSTAIN))
        radius = torch.where(
            certified, torch.as_tensor(self.noise.radius(p_lower), dtype=torch.float64), torch.nan
        )
        return Certified(prediction, radius, self.noise.norm, p_lower=p_lower), counts, done + n0


def _top_two(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top class ``a`` and runner-up ``b`` of integer ``counts`` ``(batch, classes)``, ties to the lowest index."""
    a = counts.argmax(dim=1)
    b = counts.scatter(1, a.unsqueeze(1), torch.iinfo(counts.dtype).min).argmax(dim=1)
    return a, b


def certify_counts(noise: Noise, counts) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact certificate of ``noise`` from ``counts`` ``(batch, classes)`` over all of its draws ->
    ``(prediction, radius)``. Raises ConfigError for noises without an exact certificate."""
    if not getattr(noise, "exact", False):
        raise ConfigError(
            f"noise {noise.name!r} has no exact certificate; use SmoothedClassifier.certify (Monte-Carlo)"
        )
    counts = torch.as_tensor(np.asarray(counts) if not isinstance(counts, torch.Tensor) else counts)
    if counts.dim() != 2 or counts.is_floating_point() or bool((counts < 0).any()):
        raise ConfigError(
            f"counts must be a non-negative integer tensor (batch, classes), got {counts.dtype} {tuple(counts.shape)}"
        )
    totals = counts.sum(dim=1)
    if bool((totals != noise.num_draws).any()):
        raise ConfigError(
            f"each row of counts must sum to the noise's {noise.num_draws} draws; got sums {sorted(set(totals.tolist()))[:5]}"
        )
    return noise.certify_counts(counts)
