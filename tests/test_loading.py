"""Classifier checkpoints: this project's, the reference implementation's model_ckpt.torch and denoised-smoothing's
checkpoint.pth.tar; safe loading."""

from __future__ import annotations

import pickle

import pytest
import torch

import smoothcore
from smoothcore import CheckpointError
from smoothcore.checkpoints import save_safetensors
from smoothcore.loading import classifier_checkpoint
from smoothcore.models import build_classifier
from smoothcore_plugins.classifiers import WideResNet
from smoothcore_plugins.datasets import CIFAR10_MEAN, CIFAR10_STD


def randomised_wrn(seed: int = 0) -> WideResNet:
    torch.manual_seed(seed)
    net = WideResNet(40, 10, 2)
    for m in net.modules():  # non-trivial batch-norm statistics, so a wrong mapping shows in the logits
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_wrn40_has_the_standard_parameter_names():
    keys = set(WideResNet(40, 10, 2).state_dict())
    for k in (
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.conv1.weight",
        "block1.layer.5.conv2.weight",
        "block2.layer.0.convShortcut.weight",
        "block3.layer.0.convShortcut.weight",
        "bn1.running_var",
        "fc.weight",
        "fc.bias",
    ):
        assert k in keys
    assert "block1.layer.0.convShortcut.weight" in keys  # 16 -> 32 channels: the first block widens
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert sum(p.numel() for p in WideResNet(40, 10, 2).parameters()) == 2_243_546


def test_reference_model_ckpt_loads_with_its_normalisation(tmp_path):
    net = randomised_wrn()
    mu = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    log_sig = torch.log(torch.tensor(CIFAR10_STD)).view(1, 3, 1, 1)
    state = {f"model.module.{k}": v for k, v in net.state_dict().items()}
    state["norm.module.mu"] = mu
    state["norm.module.log_sig"] = log_sig
    torch.save(state, tmp_path / "model_ckpt.torch")
    loaded = smoothcore.load_classifier(tmp_path / "model_ckpt.torch")
    assert not loaded.training
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = net((x - mu) / torch.exp(log_sig))
        assert torch.allclose(loaded(x), expected, atol=1e-5)


def test_denoised_smoothing_checkpoint_loads_through_wrn40_compat(tmp_path):
    net = randomised_wrn(1)
    ckpt = {
        "epoch": 90,
        "arch": "cifar_wrn40",
        "state_dict": {f"1.{k}": v for k, v in net.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
    }
    torch.save(ckpt, tmp_path / "checkpoint.pth.tar")
    loaded, info = smoothcore.load_classifier(tmp_path / "checkpoint.pth.tar", return_info=True)
    assert info["model"] == "wrn40-compat" and info["dataset"] == "cifar10"
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net((x - mean) / std), atol=1e-5)


def test_denoised_smoothing_dataparallel_prefix_is_accepted(tmp_path):
    net = randomised_wrn(2)
    ckpt = {
        "epoch": 1,
        "arch": "cifar_wrn40",
        "state_dict": {f"1.module.{k}": v for k, v in net.state_dict().items()},
    }
    torch.save(ckpt, tmp_path / "c.pth.tar")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            smoothcore.load_classifier(tmp_path / "c.pth.tar")(x)[0],
            net(
                (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
            )[0],
            atol=1e-5,
        )


def own_checkpoint(tmp_path, name="cnn"):
    net = build_classifier(
        name, num_classes=10, in_channels=1, image_size=28, mean=(0.286,), std=(0.353,)
    ).eval()
    ckpt = classifier_checkpoint(
        net, name=name, params={}, dataset="fashion-mnist", num_classes=10, in_channels=1, image_size=28
    )
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    return net, ckpt


def test_own_checkpoint_round_trips_with_identical_logits(tmp_path):
    net, ckpt = own_checkpoint(tmp_path)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(smoothcore.load_classifier(tmp_path / "checkpoint.pt")(x), net(x))
    save_safetensors(ckpt, tmp_path / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(smoothcore.load_classifier(tmp_path / "model.safetensors")(x), net(x))


def test_checkpoint_of_another_architecture_names_the_mismatched_keys(tmp_path):
    net = randomised_wrn()
    torch.save(
        {"epoch": 1, "arch": "cifar_wrn40", "state_dict": {f"1.{k}": v for k, v in net.state_dict().items()}},
        tmp_path / "c.pth.tar",
    )
    with pytest.raises(
        CheckpointError,
        match="does not fit the model: missing keys: net.layer1.0.conv1.weight.*unexpected keys: net.block1.*wrong shapes: net.bn1.weight",
    ):
        smoothcore.load_classifier(tmp_path / "c.pth.tar", model="resnet110")


def test_a_plain_state_dict_loads_with_the_model_and_dataset_named(tmp_path):
    """A network's own state_dict (torchvision style, no prefix) and a generic {state_dict, epoch} file: the
    dataset's normalisation goes in front, as the network was trained."""
    net, _ = own_checkpoint(tmp_path)
    torch.save(net.net.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": net.net.state_dict(), "epoch": 3}, tmp_path / "generic.pth")
    x = torch.rand(4, 1, 28, 28)
    for name in ("plain.pt", "generic.pth"):
        loaded = smoothcore.load_classifier(tmp_path / name, model="cnn", dataset="fashion-mnist")
        with torch.no_grad():
            assert torch.allclose(loaded(x), net(x), atol=1e-5)
        with pytest.raises(CheckpointError, match="not a classifier checkpoint smoothcore knows"):
            smoothcore.load_classifier(tmp_path / name)  # without the model and dataset there is no telling


def test_another_architecture_named_for_an_own_checkpoint_is_refused(tmp_path):
    own_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'cnn' classifier, not 'wrn40'"):
        smoothcore.load_classifier(tmp_path / "checkpoint.pt", model="wrn40")
    assert smoothcore.load_classifier(tmp_path / "checkpoint.pt", model="cnn") is not None


def test_checkpoint_for_other_data_is_refused(tmp_path):
    own_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="cannot classify cifar10"):
        smoothcore.load_classifier(tmp_path / "checkpoint.pt", dataset="cifar10")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    own_checkpoint(tmp_path)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "broken.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken.pt is truncated or corrupt"):
        smoothcore.load_classifier(tmp_path / "broken.pt")
    (tmp_path / "noise.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="noise.pt"):
        smoothcore.load_classifier(tmp_path / "noise.pt")


def test_a_file_that_is_no_checkpoint_at_all_is_named_so_and_trust_is_not_suggested(tmp_path):
    (tmp_path / "README.md").write_text("# not weights\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "gzip.pt").write_bytes(b"\x1f\x8b")  # a cut gzip header: nothing may try to decompress it
    for name, what in (
        ("README.md", "neither a zip archive, a pickle nor a tar archive"),
        ("empty.pt", "it is empty"),
        ("gzip.pt", "neither a zip archive, a pickle nor a tar archive"),
    ):
        with pytest.raises(CheckpointError, match=f"{name} is not a PyTorch checkpoint \\({what}\\)") as info:
            smoothcore.load_classifier(tmp_path / name)
        assert "trust" not in str(info.value) + str(info.value.hint or "")


class Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickles_that_run_code_are_refused_unless_trusted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")  # a torch checkpoint carrying code
    with open(tmp_path / "legacy.pkl", "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)  # a plain (legacy) pickle
    for name in ("evil.pt", "legacy.pkl"):
        with pytest.raises(CheckpointError, match="cannot be loaded safely(?s:.*)--trust-checkpoint"):
            smoothcore.load_classifier(tmp_path / name)
    assert not (tmp_path / "PWNED").exists()
    # trusted on purpose: it loads (and runs the payload, which is what trusting means), with a warning
    from smoothcore.checkpoints import UntrustedCheckpointWarning, load_file

    with pytest.warns(UntrustedCheckpointWarning):
        load_file(tmp_path / "evil.pt", trust=True)
    assert (tmp_path / "PWNED").exists()


def test_unknown_layout_and_missing_file(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="not a classifier checkpoint smoothcore knows"):
        smoothcore.load_classifier(tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        smoothcore.load_classifier(tmp_path / "nope.pt")


def test_nan_weights_are_refused(tmp_path):
    net, ckpt = own_checkpoint(tmp_path)
    ckpt["state_dict"]["net.classifier.3.bias"][0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN"):
        smoothcore.load_classifier(tmp_path / "nan.pt")


def test_the_reference_imagenet_model_ckpt_is_recognised_as_resnet50_on_imagenet(tmp_path):
    """The reference trained ResNet-50 on ImageNet and saved it in the same model_ckpt.torch layout as its
    CIFAR-10 WRN: the head's 1000 outputs and the ResNet's layer names say which it is, without --model/--dataset."""
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.resnet50(weights=None).eval()
    mu = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    sig = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    state = {f"model.module.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        state | {"norm.module.mu": mu, "norm.module.log_sig": sig.log()}, tmp_path / "model_ckpt.torch"
    )
    loaded, info = smoothcore.load_classifier(tmp_path / "model_ckpt.torch", return_info=True)
    assert (info["model"], info["dataset"]) == ("resnet50", "imagenet")
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net((x - mu) / sig), atol=1e-4, rtol=1e-4)  # logits of about 60
    with pytest.raises(CheckpointError, match="1000 classes") as err:
        smoothcore.load_classifier(tmp_path / "model_ckpt.torch", dataset="cifar10")
    assert "--dataset imagenet" in err.value.hint


def test_an_imagenet_checkpoint_used_with_cifar10_is_refused_with_that_fact(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.save(
        {
            "epoch": 1,
            "arch": "resnet18",
            "state_dict": {f"1.module.{k}": v for k, v in net.state_dict().items()},
        },
        tmp_path / "imagenet.pth.tar",
    )
    with pytest.raises(
        CheckpointError, match="predicts 1000 classes \\(an ImageNet model\\), but cifar10 has 10"
    ):
        smoothcore.load_classifier(tmp_path / "imagenet.pth.tar", dataset="cifar10")
    loaded, info = smoothcore.load_classifier(tmp_path / "imagenet.pth.tar", return_info=True)
    assert info["dataset"] == "imagenet" and info["model"] == "torchvision:resnet18"


@pytest.mark.parametrize("arch", ["cifar_wrn40", "cifar_wrn", "cifar_resnet110"])
def test_published_classifiers_give_the_logits_of_the_original_architecture(tmp_path, arch):
    """The original code (independent transcriptions in tests/reference_archs.py) and load_classifier on its
    denoised-smoothing checkpoint agree: same weights, same normalisation, same logits. Their architectures.py
    builds cifar_wrn40 as WRN-40-10 and cifar_wrn as WRN-28-10 (cifar_wrn40 is also tried at widen 2)."""
    from tests.reference_archs import OriginalCifarResNet, OriginalWideResNet, randomise_batch_norm

    torch.manual_seed(5)
    original = {
        "cifar_wrn40": lambda: OriginalWideResNet(40, 10, 2),
        "cifar_wrn": lambda: OriginalWideResNet(28, 10, 10),
        "cifar_resnet110": lambda: OriginalCifarResNet(110, 10),
    }[arch]()
    original = randomise_batch_norm(original, seed=6)
    # denoised smoothing saves torch.nn.DataParallel(Sequential(NormalizeLayer, model)): keys module.1.<original keys>
    torch.save(
        {
            "arch": arch,
            "epoch": 90,
            "state_dict": {f"module.1.{k}": v for k, v in original.state_dict().items()},
        },
        tmp_path / "checkpoint.pth.tar",
    )
    loaded = smoothcore.load_classifier(tmp_path / "checkpoint.pth.tar")
    x = torch.rand(6, 3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = original((x - mean) / std)
        assert (
            expected - expected.mean(dim=0)
        ).abs().max() > 1e-3  # images differ in logits: wiring mistakes show
        assert torch.allclose(loaded(x), expected, atol=1e-6, rtol=1e-4)
