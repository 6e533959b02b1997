"""Denoiser-stacked certification and training (denoised smoothing)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import smoothcore
from smoothcore import ConfigError, ExperimentError, SmoothedClassifier
from smoothcore.cli import cli
from smoothcore.denoise import denoiser_checkpoint
from smoothcore.models import Stacked
from smoothcore.runner import CertifyConfig, certify_experiment, plan
from smoothcore.train import TrainConfig, train_classifier
from smoothcore_denoisers import DnCNN
from tests.conftest import quantised


def identity_dncnn(channels: int = 1) -> DnCNN:
    net = DnCNN(channels, 4, 8)
    with torch.no_grad():
        net.dncnn[-1].weight.zero_()  # x - 0 = x
    return net.eval()


def save_denoiser(net: DnCNN, path, channels: int = 1):
    torch.save(
        denoiser_checkpoint(net, arch="dncnn", params={"depth": 4, "channels": 8}, in_channels=channels), path
    )
    return path


def test_certify_with_an_identity_denoiser_agrees_with_no_denoiser():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)).eval()
    x = quantised((6, 1, 8, 8))
    for name, kwargs in (("dssn", {}), ("ssn", {"n0": 10, "n": 200})):
        noise = smoothcore.noise(name, sigma=0.3, dim=64)
        plain = SmoothedClassifier(model, noise, 5).certify(x, **kwargs)
        stacked = SmoothedClassifier(smoothcore.stack(identity_dncnn(), model), noise, 5).certify(x, **kwargs)
        assert torch.equal(plain.prediction, stacked.prediction)
        assert torch.equal(plain.radius.nan_to_num(-1), stacked.radius.nan_to_num(-1))


def test_a_classifier_trained_on_a_denoiser_certifies_with_it_without_the_flag(tiny_idx_dir, tmp_path):
    torch.manual_seed(1)
    den = DnCNN(1, 4, 8).eval()
    den_path = save_denoiser(den, tmp_path / "den.pt")
    cfg = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(tiny_idx_dir),
        noise="dssn",
        sigma=0.25,
        epochs=1,
        batch_size=16,
        eval_limit=16,
        denoiser=str(den_path),
    )
    train_classifier(cfg, tmp_path / "run")
    run = plan(tmp_path / "run", CertifyConfig(limit=3, data_dir=str(tiny_idx_dir)))
    assert isinstance(run.smoothed.engine.model, Stacked)
    table = certify_experiment(tmp_path / "run", CertifyConfig(limit=3, data_dir=str(tiny_idx_dir)))
    # the same stack, assembled by hand from the saved files, gives the same certificates (round trip)
    from smoothcore.data import fetch, get_dataset

    x, _ = fetch(get_dataset("fashion-mnist").load("test", tiny_idx_dir), [0, 1, 2])
    by_hand = smoothcore.stack(
        smoothcore.load_denoiser(den_path), smoothcore.load_classifier(tmp_path / "run" / "checkpoint.pt")
    )
    result = SmoothedClassifier(by_hand, smoothcore.noise("dssn", sigma=0.25, dim=784), 10).certify(x)
    assert result.prediction.tolist() == table["prediction"].tolist()
    assert result.radius.tolist() == table["radius"].tolist()
    # a denoiser that changed since training is refused rather than silently used
    torch.save(
        denoiser_checkpoint(
            identity_dncnn(), arch="dncnn", params={"depth": 4, "channels": 8}, in_channels=1
        ),
        den_path,
    )
    with pytest.raises(ExperimentError, match="changed since the classifier was trained"):
        plan(tmp_path / "run", CertifyConfig(limit=3, data_dir=str(tiny_idx_dir)))


def test_off_the_shelf_clean_classifier_plus_denoiser_through_the_cli(tiny_idx_dir, tmp_path):
    cfg = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(tiny_idx_dir),
        noise="none",
        epochs=1,
        batch_size=16,
        eval_limit=16,
    )
    train_classifier(cfg, tmp_path / "clean")
    den_path = save_denoiser(identity_dncnn(), tmp_path / "den.pt")
    result = CliRunner().invoke(
        cli,
        [
            "certify",
            str(tmp_path / "stack"),
            "--checkpoint",
            str(tmp_path / "clean" / "checkpoint.pt"),
            "--denoiser",
            str(den_path),
            "--noise",
            "dssn",
            "--sigma",
            "0.25",
            "--data-dir",
            str(tiny_idx_dir),
            "--limit",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "stack" / "certify_dssn_sigma0.25_denoised.csv").is_file()


def test_a_three_channel_denoiser_on_grey_data_is_refused(run_copy, fashion_dir, tmp_path):
    den_path = save_denoiser(identity_dncnn(3), tmp_path / "den3.pt", channels=3)
    result = CliRunner().invoke(
        cli,
        [
            "certify",
            str(run_copy),
            "--denoiser",
            str(den_path),
            "--data-dir",
            str(fashion_dir),
            "--limit",
            "2",
        ],
    )
    assert result.exit_code == 2 and "takes 3-channel images but the data has 1" in result.output
    with pytest.raises(ConfigError, match="3-channel"):
        from smoothcore.denoise import load_frozen_denoiser

        load_frozen_denoiser(str(den_path), 1, torch.device("cpu"))


def test_a_stacked_model_round_trips_through_save_and_load_with_identical_outputs(tmp_path):
    from smoothcore.loading import classifier_checkpoint
    from smoothcore.models import build_classifier

    torch.manual_seed(3)
    den = DnCNN(1, 4, 8).eval()
    with torch.no_grad():
        den.dncnn[-1].weight.normal_(0, 0.1)  # a denoiser that really changes its input
    clf = build_classifier(
        "cnn", num_classes=10, in_channels=1, image_size=28, mean=(0.3,), std=(0.3,)
    ).eval()
    in_memory = smoothcore.stack(den, clf)
    save_denoiser(den, tmp_path / "den.pt")
    torch.save(
        classifier_checkpoint(
            clf, name="cnn", params={}, dataset="fashion-mnist", num_classes=10, in_channels=1, image_size=28
        ),
        tmp_path / "clf.pt",
    )
    reloaded = smoothcore.stack(
        smoothcore.load_denoiser(tmp_path / "den.pt"), smoothcore.load_classifier(tmp_path / "clf.pt")
    )
    x = quantised((5, 1, 28, 28), seed=4)
    with torch.no_grad():
        assert not torch.allclose(den(x), x)
        assert torch.equal(in_memory(x), reloaded(x))


def test_off_the_shelf_published_classifier_and_denoiser_certify_on_cifar10(tmp_path):
    """The denoised-smoothing setting without training: their cifar_wrn40 classifier (through wrn40-compat) and
    their cifar_dncnn denoiser, both as DataParallel checkpoint.pth.tar files, stacked by certify on CIFAR-10 data."""
    import numpy as np
    import pandas as pd

    from smoothcore.data import fetch, get_dataset
    from tests.plugins.test_datasets import write_cifar_fixture
    from tests.reference_archs import OriginalWideResNet, randomise_batch_norm

    data = write_cifar_fixture(tmp_path / "cifar-10-batches-py", n_per_batch=4)
    torch.manual_seed(7)
    wrn = randomise_batch_norm(OriginalWideResNet(40, 10, 2), seed=8)
    torch.save(
        {"arch": "cifar_wrn40", "state_dict": {f"module.1.{k}": v for k, v in wrn.state_dict().items()}},
        tmp_path / "classifier.pth.tar",
    )
    dncnn = DnCNN(3, 17, 64).eval()
    torch.save(
        {"arch": "cifar_dncnn", "state_dict": {f"module.{k}": v for k, v in dncnn.state_dict().items()}},
        tmp_path / "denoiser.pth.tar",
    )
    args = [
        "certify",
        str(tmp_path / "stack"),
        "--checkpoint",
        str(tmp_path / "classifier.pth.tar"),
        "--denoiser",
        str(tmp_path / "denoiser.pth.tar"),
        "--dataset",
        "cifar10",
        "--data-dir",
        str(data),
        "--noise",
        "ssn",
        "--sigma",
        "0.5",
        "--n0",
        "4",
        "--n",
        "24",
        "--alpha",
        "0.1",
        "--limit",
        "2",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(next((tmp_path / "stack").glob("certify_*.csv")))
    x, _ = fetch(get_dataset("cifar10").load("test", data), [0, 1])
    by_hand = smoothcore.stack(
        smoothcore.load_denoiser(tmp_path / "denoiser.pth.tar"),
        smoothcore.load_classifier(tmp_path / "classifier.pth.tar"),
    )
    expected = SmoothedClassifier(by_hand, smoothcore.noise("ssn", sigma=0.5, dim=3072), 10).certify(
        x, n0=4, n=24, alpha=0.1, indices=[0, 1]
    )
    assert table["prediction"].tolist() == expected.prediction.tolist()
    assert np.allclose(table["p_lower"], expected.p_lower.numpy())
