"""The configurations of the commands (training, certification, audit, attack) as plain dataclasses, free of torch,
pandas and scipy so that the command line builds its options (and answers --help) without importing them; their
``validate``/``check`` methods import what they check against when called."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from smoothcore.errors import ConfigError

PRECISION_NAMES = ("fp32", "bf16", "fp16")  # smoothcore.engine.PRECISIONS maps them to torch dtypes
PAPER_RADII = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
SEARCHES = ("random", "greedy", "gradient")


# The reference recipes (SPEC.md); anything else starts from the generic defaults of TrainConfig.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("cifar10", "wrn40"): {"epochs": 120, "batch_size": 64, "lr": 0.1},
    ("imagenet", "resnet50"): {"epochs": 30, "batch_size": 256, "lr": 0.1},
}


@dataclass
class TrainConfig:
    dataset: str = "fashion-mnist"
    model: str = "cnn"
    noise: str = "dssn"
    sigma: float | None = None
    lambd: float | None = None
    noise_seed: int = 0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    objective: str = "plain"  # a registered training objective (smoothcore.objectives)
    objective_params: dict[str, Any] = field(default_factory=dict)
    stability: bool = False  # the same as objective "stability" (kept: earlier runs recorded it)
    stability_weight: float = 6.0  # stability's weight (objective parameter "weight")
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int = 1000
    data_dir: str | None = None
    denoiser: str | None = None
    denoiser_sha256: str | None = None
    finetune: str | None = None
    precision: str = "fp32"
    channels_last: bool = False
    device: str = "auto"  # cuda when available, else cpu
    workers: int = 0
    save_every: int = 1
    save_every_steps: int | None = None
    trust_checkpoint: bool = False
    model_params: dict[str, Any] = field(default_factory=dict)
    noise_params: dict[str, Any] = field(default_factory=dict)  # a noise's further parameters (plugins')

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve_objective(self) -> None:
        """``stability``/``stability_weight`` and ``objective``/``objective_params`` say the same thing: make them
        agree (``--stability`` is ``--objective stability``; a run recorded before objectives existed resumes as
        the objective it trained with)."""
        if not isinstance(self.objective_params, dict):
            raise ConfigError(f"objective_params must be a mapping, got {self.objective_params!r}")
        if self.stability:
            if self.objective not in ("plain", "stability"):
                raise ConfigError(
                    f"--stability and --objective {self.objective} both given: --stability is --objective stability",
                    hint="give one of them",
                )
            self.objective = "stability"
            self.objective_params = {"weight": self.stability_weight, **self.objective_params}
        if self.objective == "stability":
            self.stability = True
            weight = self.objective_params.get("weight", self.stability_weight)
            self.stability_weight = weight
            self.objective_params = {**self.objective_params, "weight": weight}

    def validate(self) -> None:
        from smoothcore.checks import check_params
        from smoothcore.engine import PRECISIONS
        from smoothcore.models import MODEL_ARGUMENTS
        from smoothcore.noises import NOISE_ARGUMENTS

        self.resolve_objective()
        if self.noise == "none":  # a clean classifier: options of noisy training would be silently ignored
            given = [
                opt
                for opt, on in (
                    ("--sigma", self.sigma is not None),
                    ("--lambda", self.lambd is not None),
                    ("--stability", self.stability),
                    (f"--objective {self.objective}", self.objective not in ("plain", "stability")),
                    ("--noise-param", bool(self.noise_params)),
                )
                if on
            ]
            if given:
                raise ConfigError(
                    f"{', '.join(given)} given with --noise none: a clean classifier is trained without noise",
                    hint="drop them, or name the noise to train under",
                )
        check_params("noise_params", self.noise_params, NOISE_ARGUMENTS)
        check_params("model_params", self.model_params, MODEL_ARGUMENTS)
        for name in ("epochs", "batch_size", "eval_limit", "save_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.train_limit is not None and (not isinstance(self.train_limit, int) or self.train_limit < 1):
            raise ConfigError(f"train_limit must be a positive integer, got {self.train_limit!r}")
        for name, high in (("lr", 10.0), ("weight_decay", 1.0), ("momentum", 1.0), ("stability_weight", 1e6)):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
                or v > high
                or (name == "lr" and v == 0)
                or (name == "momentum" and v == 1)
            ):
                bounds = {"lr": "in (0, 10]", "momentum": "in [0, 1)"}.get(name, f"in [0, {high:g}]")
                raise ConfigError(f"{name} must be a number {bounds}, got {v!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class CertifyConfig:
    """What a certification is asked to do (``None``: the experiment's own, or the default). The command line's
    ``smoothcore certify`` options take their defaults from here."""

    noise: str | None = None  # default: the noise the classifier was trained with
    sigma: float | None = None
    lambd: float | None = None
    noise_seed: int | None = None
    noise_params: dict[str, Any] | None = None  # a noise's further parameters; None: the training's
    certificate: str | None = None
    n0: int = 64
    n: int = 100_000
    alpha: float = 0.001
    skip: int = 1
    limit: int | None = None
    offset: int = 0
    max_batch: int | str = "auto"  # or a positive integer
    precision: str = "fp32"
    channels_last: bool | None = None  # None: chosen by max_batch="auto", else the default layout
    compile: bool = False
    device: str = "auto"  # cuda when available, else cpu
    data_dir: str | None = None
    dataset: str | None = None
    denoiser: str | None = None
    tag: str | None = None
    trust_checkpoint: bool = False
    radii: list[float] | None = None  # early decisions at these radii

    def validate(self) -> None:
        """The options that need no model or data, checked before anything is loaded (a sweep checks them before
        its first run trains)."""
        from smoothcore.certify import SmoothedClassifier
        from smoothcore.checks import check_params, check_radii
        from smoothcore.data import subset_indices
        from smoothcore.engine import PRECISIONS, check_batch
        from smoothcore.noises import NOISE_ARGUMENTS

        SmoothedClassifier._check_mc(self.n0, self.n, self.alpha)
        if self.noise_params is not None:
            check_params("noise_params", self.noise_params, NOISE_ARGUMENTS)
        subset_indices(0, self.skip, self.limit, self.offset)
        if self.max_batch != "auto":
            check_batch(self.max_batch, "max_batch")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.radii is not None:
            self.radii = check_radii(self.radii)  # the Python API's check; recorded as a JSON list of floats


@dataclass
class AuditConfig:
    """How hard to search.

    ``budget``: base-classifier evaluations per image and search inside the radius (1.5 times as many beyond
    it, and as many to shrink the smallest flip). ``grid``: perturbations are multiples of ``1 / grid`` per
    pixel. ``pool``: pixels the greedy search tries per step. ``grad_draws``: draws behind each gradient.
    Monte-Carlo: ``n_search`` draws for the search's estimates, ``n_test`` fresh draws per test, ``alpha`` the
    family-wise level of the tests. ``attacks``: the registered attacks (:mod:`smoothcore.attacks`) that also run,
    inside the radius and beyond it, with ``attack_budget`` forward passes each (None: the defaults for
    the noise; an empty tuple: none).
    """

    searches: tuple[str, ...] = SEARCHES
    budget: int = 300
    tightness: bool = True
    seed: int = 0
    grid: int = 255
    pool: int = 12
    grad_draws: int = 16
    n_search: int = 128
    n_test: int = 1000
    alpha: float = 0.01
    attacks: tuple[str, ...] | None = (
        None  # None: the attacks that are defaults for the noise (default_for); (): none
    )
    attack_budget: int = 20_000  # forward passes per image and attack, inside the radius and beyond it

    def check(self) -> AuditConfig:
        searches = tuple(self.searches)
        unknown = [s for s in searches if s not in SEARCHES]
        if not searches or unknown:
            raise ConfigError(
                f"searches must be a non-empty subset of {', '.join(SEARCHES)}, "
                f"got {', '.join(searches) or '(none)'}"
            )
        if self.attacks is not None:
            self.attacks = tuple(dict.fromkeys(self.attacks))
        for name in ("budget", "grid", "pool", "grad_draws", "n_search", "n_test", "attack_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"audit {name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"audit seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not 0.0 < float(self.alpha) < 0.5:
            raise ConfigError(f"audit alpha must be in (0, 0.5), got {self.alpha!r}")
        self.searches = tuple(dict.fromkeys(searches))
        return self


@dataclass
class AttackConfig:
    """``attacks``: names (default: the registered attacks that are defaults for the noise, ``default_for``).
    ``budget``: forward passes per image and attack, a Monte-Carlo flip's pilot, first test and first smaller try
    included (what an attack leaves unused goes to the ones after it). Monte-Carlo verification: ``n_test`` fresh
    draws per candidate (2,000: on the uniform and SSN CNNs of ``benchmarks/attacks.py``, same budget, 1,000 gave
    median flips 1-2% larger and 4,000 2-8% larger), family-wise ``alpha`` per image. ``seed`` keys every stream."""

    attacks: tuple[str, ...] | None = None
    budget: int = 20_000
    n_test: int = 2000
    alpha: float = 0.01
    seed: int = 0

    def check(self) -> AttackConfig:
        for name in ("budget", "n_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"attack {name} must be a positive integer, got {value!r}")
        if not 0.0 < float(self.alpha) < 0.5:
            raise ConfigError(f"attack alpha must be in (0, 0.5), got {self.alpha!r}")
        if self.attacks is not None:
            self.attacks = tuple(dict.fromkeys(self.attacks))
            if not self.attacks:
                raise ConfigError("attacks is an empty list")
        return self
