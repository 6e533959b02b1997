"""Every extension point of smoothcore. This file is the whole contract a plugin relies on.

A plugin is a module or object with functions named like the hooks below, marked with ``smoothcore.hookimpl``.
Built-in plugins (``smoothcore_plugins.*``) use exactly these hooks; third-party packages are found through the
``smoothcore`` entry-point group. Each ``register_*`` hook receives a ``register(name, factory, description="",
**info)`` callback and may call it any number of times. The registry records which plugin registered each name.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("smoothcore")
hookimpl = pluggy.HookimplMarker("smoothcore")


@hookspec
def register_noises(register: Any) -> None:
    """Register noise distributions.

    ``factory(*, sigma, lambd, dim, seed, device, **params)`` returns a :class:`smoothcore.Noise` (sampled:
    ``sample(x, generator)``) or :class:`smoothcore.noises.ExactNoise` (adds ``num_draws``, ``draws(x, start,
    stop)`` and ``certify_counts``). Its capabilities are declared in class attributes (``monte_carlo_certificate``,
    ``exact``, ``early_decisions``, ``input_grid``, ``finite_draws``: see :mod:`smoothcore.noises`) and checked when
    it is built; its name is the registered ``name`` (``noise.name``). Noises only transform tensors, on the
    input's device; they never call models or loop over draws. ``sigma`` and ``lambd`` are None when not given;
    the factory validates them and raises ConfigError.
    """


@hookspec
def register_certificates(register: Any) -> None:
    """Register certificate functions.

    ``factory()`` returns a :class:`smoothcore.certificates.Certificate`: a pure function from statistics of the
    base classifier under a noise (draw counts, and the input where needed) to predictions and radii, plus
    ``applies_to(noise)`` (which reads the noise's declared capabilities). Its name is the registered ``name``.
    """


@hookspec
def register_classifiers(register: Any) -> None:
    """Register base classifier architectures.

    ``factory(*, num_classes, in_channels, image_size, **params)`` returns an ``nn.Module`` from normalised
    images ``(batch, in_channels, H, W)`` to logits ``(batch, num_classes)``. The framework puts the dataset's
    normalisation in front of it (:class:`smoothcore.models.NormalizedClassifier`), so every classifier takes
    ``[0, 1]`` pixels and every checkpoint holds ``norm.mean``, ``norm.std`` and ``net.<its keys>``.
    A name registered with ``variants=True`` also answers ``name:variant`` (``factory(..., variant=...)``).
    """


@hookspec
def register_denoisers(register: Any) -> None:
    """Register denoiser architectures.

    ``factory(*, in_channels, **params)`` returns an ``nn.Module`` from noisy ``[0, 1]`` images to denoised
    images of the same shape.
    """


@hookspec
def register_datasets(register: Any) -> None:
    """Register datasets.

    ``factory()`` returns a :class:`smoothcore.data.DatasetSource`: its facts (classes, image shape,
    normalisation) and ``load(split, data_dir)`` returning a dataset of ``(image in [0, 1], label)``.
    """


@hookspec
def register_training_objectives(register: Any) -> None:
    """Register training objectives of the base classifier.

    ``factory(*, noise, **params)`` returns a :class:`smoothcore.objectives.TrainingObjective` for training under
    ``noise`` (a :class:`smoothcore.Noise`, or None for a clean classifier): its ``loss(forward, noisy, x, y)``
    returns the loss summed over the batch and the logits of one noisy draw, drawing noise only through ``noisy``
    (see :mod:`smoothcore.objectives`). ``train-classifier --objective NAME --objective-param KEY=VALUE`` builds it;
    parameters the factory does not take are refused.
    """


@hookspec
def register_attacks(register: Any) -> None:
    """Register attacks on the smoothed classifier.

    ``factory(**params)`` returns a :class:`smoothcore.attacks.Attack`: ``applies_to(noise)``, optionally
    ``default_for(noise)`` (whether it runs when no attacks are named; default: where it applies), and
    ``run(target, max_norm=..., stop=...)``, the smallest perturbed image it found to change the smoothed
    prediction of ``target`` (an :class:`smoothcore.attacks.AttackTarget`, through which every forward pass is
    counted), or None. The framework verifies every flip itself before reporting it (see :mod:`smoothcore.attacks`).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``smoothcore`` click group."""
