"""Loading and saving classifiers in every layout smoothcore knows (see :mod:`smoothcore.checkpoints`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcore.checkpoints import CLASSIFIER_FORMAT, load_file, load_state_strict, strip_prefix
from smoothcore.devices import resolve_device
from smoothcore.errors import CheckpointError, ConfigError
from smoothcore.models import NormalizedClassifier, build_classifier

# denoised-smoothing architecture names -> (smoothcore model, default dataset)
DENOISED_SMOOTHING_ARCHS: dict[str, tuple[str, str]] = {
    "cifar_wrn40": ("wrn40-compat", "cifar10"),
    "cifar_wrn": ("wrn40-compat", "cifar10"),
    "wrn40": ("wrn40-compat", "cifar10"),
    "cifar_resnet110": ("resnet110", "cifar10"),
    "resnet50": ("resnet50", "imagenet"),
    "resnet18": ("torchvision:resnet18", "imagenet"),
    "resnet34": ("torchvision:resnet34", "imagenet"),
    "resnet101": ("torchvision:resnet101", "imagenet"),
}


def classifier_checkpoint(
    model: NormalizedClassifier,
    *,
    name: str,
    params: dict[str, Any],
    dataset: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The smoothcore checkpoint dict of a classifier (loadable with ``weights_only=True``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": CLASSIFIER_FORMAT,
        "version": 1,
        "model": name,
        "model_params": dict(params),
        "dataset": dataset,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "mean": model.norm.mean.flatten().tolist(),
        "std": model.norm.std.flatten().tolist(),
        "state_dict": state,
        **(extra or {}),
    }


def detect_layout(obj: Any) -> str:
    if isinstance(obj, dict):
        if obj.get("format") == CLASSIFIER_FORMAT:
            return "smoothcore"
        if "state_dict" in obj and "arch" in obj:
            return "denoised-smoothing"
        keys = [k for k in obj if isinstance(k, str)]
        if keys and any(k.startswith("model.module.") for k in keys) and "norm.module.mu" in obj:
            return "reference"
        if (
            keys
            and all(isinstance(v, torch.Tensor) for v in obj.values())
            and any(k.startswith("net.") for k in keys)
        ):
            return "state-dict"
    return "unknown"


def _reference_state(obj: dict[str, Any]) -> dict[str, Any]:
    """The network weights of a reference ``model_ckpt.torch``, named as this project's ``net.*``."""
    return {("net." + k[len("model.module.") :]): v for k, v in obj.items() if k.startswith("model.module.")}


def _denoised_smoothing_state(obj: dict[str, Any], path: Path) -> dict[str, Any]:
    """The network weights of a denoised-smoothing ``checkpoint.pth.tar`` (``module.`` / ``1.`` prefixes of their
    DataParallel(Sequential(normalize, model))), named as this project's ``net.*``."""
    state = obj["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_dict is not a mapping")
    state = {k: v for k, v in state.items() if isinstance(k, str)}
    state = {
        ("net." + k[2:]): v for k, v in strip_prefix(state, "module.").items() if k.startswith("1.")
    } or state
    state = strip_prefix(state, "net.module.")
    return {("net." + k if not k.startswith("net.") else k): v for k, v in state.items()}


def classifier_weights(obj: Any, path: str | Path) -> dict[str, Any]:
    """The weights of a classifier checkpoint in any known layout, named as this project's modules (for
    fine-tuning, where the class count and the normalisation may differ from the checkpoint's)."""
    layout = detect_layout(obj)
    if layout == "smoothcore":
        return dict(obj["state_dict"])
    if layout == "reference":
        return _reference_state(obj)
    if layout == "denoised-smoothing":
        return _denoised_smoothing_state(obj, Path(path))
    if layout == "state-dict":
        return dict(obj)
    if isinstance(obj, dict) and isinstance(
        obj.get("state_dict"), dict
    ):  # a generic {"state_dict": ..., "epoch": ...}
        obj = obj["state_dict"]
    if (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        state = strip_prefix(obj, "module.")
        if any(k.startswith("net.") for k in state):
            return state
        return {("net." + k): v for k, v in state.items()}  # a bare torchvision-style state dict
    raise CheckpointError(
        f"{path}: no classifier weights smoothcore knows how to read",
        hint="known layouts: smoothcore checkpoint.pt, the reference model_ckpt.torch, "
        "denoised-smoothing checkpoint.pth.tar, a state dict",
    )


def _head_outputs(state: dict[str, Any]) -> int | None:
    """The number of outputs of a network's last ``fc`` layer (None when it has none)."""
    heads = [
        k
        for k in state
        if k.endswith("fc.weight") and isinstance(state[k], torch.Tensor) and state[k].dim() == 2
    ]
    return int(state[heads[-1]].shape[0]) if heads else None


def _check_classes(state: dict[str, Any], num_classes: int, dataset: str, path: Path) -> None:
    """A checkpoint whose last layer has another number of outputs than the dataset has classes is refused with
    that fact, before any key-by-key comparison."""
    have = _head_outputs(state)
    if have is not None and have != num_classes:
        kind = " (an ImageNet model)" if have == 1000 else ""
        use = (
            "give --dataset imagenet"
            if have == 1000
            else "use the checkpoint with the data it was trained on"
        )
        raise CheckpointError(
            f"{path} predicts {have} classes{kind}, but {dataset} has {num_classes}",
            hint=f"{use}, or fine-tune it (--finetune)",
        )


def _dataset_facts(dataset: str) -> tuple[int, int, int, tuple[float, ...], tuple[float, ...]]:
    from smoothcore.data import get_dataset

    src = get_dataset(dataset)
    c, h, _ = src.image_shape
    return src.num_classes, c, h, src.mean, src.std


def resolve_source(source: str | Path):
    """``(local path, pretrained record or None)`` of a checkpoint given as a path, a pretrained name or a URL. An
    existing file wins over a name that looks the same."""
    from smoothcore import pretrained

    if Path(source).exists() or not pretrained.is_pretrained_name(source):
        return Path(source), None
    text = str(source)
    record = None if text.startswith(("https://", "http://", "hf://")) else pretrained.get(text)
    return pretrained.fetch(text), record


def load_classifier(
    path: str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    trust: bool = False,
    device: str | torch.device = "cpu",
    return_info: bool = False,
):
    """An eval-mode classifier from ``[0, 1]`` pixels to logits, from a checkpoint in any known layout.

    ``model`` and ``dataset`` name the architecture and data (their normalisation and class count) where the
    file does not say: smoothcore checkpoints carry both; the reference ``model_ckpt.torch`` defaults to
    ``wrn40``/``cifar10``; denoised-smoothing checkpoints derive them from ``arch``. With ``return_info`` the
    result is ``(module, info)``, info holding the layout, model, dataset and the checkpoint's extra fields.

    ``path`` may also name a pretrained classifier (``levine-feizi-2021/cifar_split_derandomized_1.0``; see
    ``smoothcore models``), a ``https://...#sha256=`` URL or an ``hf://`` file: it is downloaded and verified on
    first use, then read from the cache (:mod:`smoothcore.pretrained`); a named one brings its model and dataset.
    """
    path, record = resolve_source(path)
    if record is not None:
        model, dataset = model or record.model, dataset or record.dataset
    device = resolve_device(device)
    obj = load_file(path, trust=trust)
    layout = detect_layout(obj)
    info: dict[str, Any] = {"layout": layout, "path": str(path)}
    if layout == "smoothcore":
        if model is not None and model != obj.get("model"):
            raise CheckpointError(
                f"{path} holds a {obj.get('model')!r} classifier, not {model!r}",
                hint="smoothcore checkpoints name their own architecture: leave the model out",
            )
        if dataset is not None and dataset != obj["dataset"]:
            src_classes = _dataset_facts(dataset)[0]
            if src_classes != obj["num_classes"] or _dataset_facts(dataset)[1] != obj["in_channels"]:
                raise CheckpointError(
                    f"{path} is a {obj['model']} classifier for {obj['dataset']} ({obj['num_classes']} classes, "
                    f"{obj['in_channels']} channels); it cannot classify {dataset}"
                )
        try:
            net = build_classifier(
                obj["model"],
                num_classes=int(obj["num_classes"]),
                in_channels=int(obj["in_channels"]),
                image_size=int(obj["image_size"]),
                mean=obj["mean"],
                std=obj["std"],
                **dict(obj.get("model_params") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: incomplete smoothcore checkpoint ({exc!r})") from None
        load_state_strict(net, obj["state_dict"], str(path))
        info.update({k: v for k, v in obj.items() if k != "state_dict"})
    elif layout == "reference":
        state = _reference_state(obj)
        if dataset is None:  # the reference trained WRN-40-2 on CIFAR-10 and ResNet-50 on ImageNet
            dataset = "imagenet" if _head_outputs(state) == 1000 else "cifar10"
        model = model or ("resnet50" if any(k.startswith("net.layer1.") for k in state) else "wrn40")
        num_classes, c, size, _, _ = _dataset_facts(dataset)
        mu, log_sig = obj["norm.module.mu"], obj["norm.module.log_sig"]
        net = build_classifier(
            model,
            num_classes=num_classes,
            in_channels=c,
            image_size=size,
            mean=mu.flatten().tolist(),
            std=torch.exp(log_sig.double()).flatten().tolist(),
        )
        _check_classes(state, num_classes, dataset, path)
        state["norm.mean"] = mu.float().reshape(net.norm.mean.shape)
        state["norm.std"] = torch.exp(log_sig.float()).reshape(net.norm.std.shape)
        load_state_strict(
            net,
            state | {k: v for k, v in obj.items() if not k.startswith(("model.module.", "norm.module."))},
            str(path),
        )
        info.update({"model": model, "dataset": dataset})
    elif layout == "denoised-smoothing":
        arch = str(obj["arch"])
        if arch not in DENOISED_SMOOTHING_ARCHS:
            if "dncnn" in arch or "memnet" in arch:
                raise CheckpointError(
                    f"{path} is a denoiser ({arch}), not a classifier", hint="give it as --denoiser"
                )
            raise CheckpointError(
                f"{path}: unknown denoised-smoothing classifier architecture {arch!r}; known: "
                f"{', '.join(sorted(DENOISED_SMOOTHING_ARCHS))}"
            )
        default_model, default_dataset = DENOISED_SMOOTHING_ARCHS[arch]
        model = model or default_model
        dataset = dataset or default_dataset
        num_classes, c, size, mean, std = _dataset_facts(dataset)
        state = _denoised_smoothing_state(obj, path)
        _check_classes(state, num_classes, dataset, path)
        params = {}
        if model.startswith("wrn40") and "net.fc.weight" in state:
            params["widen_factor"] = int(state["net.fc.weight"].shape[1]) // 64
        if model == "wrn40-compat":  # cifar_wrn is a WRN-28-10, cifar_wrn40 a WRN-40-10
            blocks = {k.split(".")[3] for k in state if k.startswith("net.block1.layer.")}
            params["depth"] = 6 * len(blocks) + 4 if blocks else 40
        net = build_classifier(
            model, num_classes=num_classes, in_channels=c, image_size=size, mean=mean, std=std, **params
        )
        state["norm.mean"] = net.norm.mean.clone()
        state["norm.std"] = net.norm.std.clone()
        load_state_strict(net, state, str(path))
        info.update({"model": model, "dataset": dataset, "arch": arch})
    elif layout == "state-dict":
        if model is None or dataset is None:
            raise CheckpointError(
                f"{path} is a bare state dict; give the model and dataset it belongs to (--model, --dataset)"
            )
        num_classes, c, size, mean, std = _dataset_facts(dataset)
        net = build_classifier(
            model, num_classes=num_classes, in_channels=c, image_size=size, mean=mean, std=std
        )
        load_state_strict(net, obj, str(path))
        info.update({"model": model, "dataset": dataset})
    else:
        net = _generic_state_dict(obj, path, model, dataset)
        if net is None:
            keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(
                f"{path}: not a classifier checkpoint smoothcore knows (top level: {keys})",
                hint="known layouts: smoothcore checkpoint.pt, the reference model_ckpt.torch, "
                "denoised-smoothing checkpoint.pth.tar; a plain state dict loads with the model and dataset given",
            )
        info.update({"layout": "state-dict", "model": model, "dataset": dataset})
    net = net.to(device).eval()
    return (net, info) if return_info else net


def _generic_state_dict(obj: Any, path: Path, model: str | None, dataset: str | None) -> nn.Module | None:
    """A plain ``net.state_dict()`` (no ``net.`` prefix, possibly DataParallel's ``module.``) or a generic
    ``{"state_dict": ..., "epoch": ...}`` of the architecture ``model``, given with its ``dataset``: the weights are
    the network's and the dataset's normalisation goes in front (as ``--finetune`` reads them). None when ``obj``
    is no such thing or the model or dataset is not given."""
    if model is None or dataset is None:
        return None
    try:
        state = classifier_weights(obj, path)
    except CheckpointError:
        return None
    num_classes, c, size, mean, std = _dataset_facts(dataset)
    _check_classes(state, num_classes, dataset, path)
    net = build_classifier(model, num_classes=num_classes, in_channels=c, image_size=size, mean=mean, std=std)
    state.setdefault("norm.mean", net.norm.mean.clone())
    state.setdefault("norm.std", net.norm.std.clone())
    load_state_strict(net, state, str(path))
    return net


def check_compatible(info: dict[str, Any], dataset: str) -> None:
    """Refuse to use a classifier on data of another class count or channel count."""
    num_classes, c, _, _, _ = _dataset_facts(dataset)
    have_classes = info.get("num_classes")
    have_channels = info.get("in_channels")
    if have_classes is not None and int(have_classes) != num_classes:
        raise ConfigError(f"the classifier predicts {have_classes} classes but {dataset} has {num_classes}")
    if have_channels is not None and int(have_channels) != c:
        raise ConfigError(
            f"the classifier takes {have_channels}-channel images but {dataset} has {c} channels"
        )
