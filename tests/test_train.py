"""Classifier training under noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import smoothcore
from smoothcore import ConfigError, ExperimentError
from smoothcore.checkpoints import load_file
from smoothcore.train import TrainConfig, Trainer, train_classifier
from smoothcore_plugins.objectives import stability_loss


def tiny_config(data_dir, **overrides) -> TrainConfig:
    base = dict(
        dataset="fashion-mnist",
        data_dir=str(data_dir),
        model="cnn",
        noise="dssn",
        sigma=0.25,
        epochs=2,
        batch_size=16,
        lr=0.05,
        eval_limit=32,
        seed=3,
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_training_writes_an_experiment_folder(tiny_idx_dir, tmp_path):
    log = train_classifier(tiny_config(tiny_idx_dir), tmp_path / "run")
    assert list(log.columns) == ["epoch", "train_loss", "train_noisy_acc", "test_noisy_acc", "lr", "seconds"]
    assert len(log) == 2
    for name in ("config.json", "manifest.json", "checkpoint.pt", "train_state.pt", "train_log.csv"):
        assert (tmp_path / "run" / name).is_file()
    ckpt = load_file(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["model"] == "cnn" and ckpt["noise"]["name"] == "dssn" and ckpt["epoch"] == 2
    import json

    from smoothcore.checkpoints import sha256

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (
        manifest["checkpoint_sha256"] == sha256(tmp_path / "run" / "checkpoint.pt") and manifest["epoch"] == 2
    )
    assert {"smoothcore", "torch", "python"} <= set(manifest["versions"])
    assert manifest["plugins"]["smoothcore_plugins.splitting"] == "built-in"
    assert manifest["noise"]["name"] == "dssn" and manifest["noise"]["sigma"] == 0.25
    assert manifest["data"]["dataset"] == "fashion-mnist" and manifest["data"]["train_images"] == 64
    assert len(manifest["data"]["train_fingerprint"]) >= 16


def test_noise_augmentation_learns_real_data(fashion_dir, tmp_path):
    """One epoch on 3,000 real Fashion-MNIST images under DSSN noise beats chance by far."""
    cfg = tiny_config(
        fashion_dir, epochs=1, train_limit=3000, eval_limit=500, batch_size=64, lr=0.05, sigma=0.5
    )
    log = train_classifier(cfg, tmp_path / "run")
    assert log["test_noisy_acc"].iloc[-1] > 0.5


def test_training_is_deterministic_for_a_seed(tiny_idx_dir, tmp_path):
    train_classifier(tiny_config(tiny_idx_dir, epochs=1), tmp_path / "a")
    train_classifier(tiny_config(tiny_idx_dir, epochs=1), tmp_path / "b")
    a = load_file(tmp_path / "a" / "checkpoint.pt")["state_dict"]
    b = load_file(tmp_path / "b" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class Crash(Exception):
    pass


@pytest.mark.parametrize("stability", [False, True])
def test_resumed_training_matches_an_uninterrupted_run(tiny_idx_dir, tmp_path, stability):
    cfg = tiny_config(tiny_idx_dir, epochs=3, stability=stability)
    train_classifier(cfg, tmp_path / "straight")

    def crash_after_first(row):
        if row["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        Trainer(tiny_config(tiny_idx_dir, epochs=3, stability=stability), tmp_path / "resumed").run(
            on_epoch=crash_after_first
        )
    log = Trainer(tiny_config(tiny_idx_dir, epochs=3, stability=stability), tmp_path / "resumed").run(
        resume=True
    )
    assert log["epoch"].tolist() == [1, 2, 3]
    a = load_file(tmp_path / "straight" / "checkpoint.pt")["state_dict"]
    b = load_file(tmp_path / "resumed" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_experiment_is_refused_and_resume_with_changes_shows_them(tiny_idx_dir, tmp_path):
    train_classifier(tiny_config(tiny_idx_dir, epochs=1), tmp_path / "run")
    with pytest.raises(ExperimentError, match="already holds an experiment"):
        train_classifier(tiny_config(tiny_idx_dir, epochs=1), tmp_path / "run")
    with pytest.raises(ExperimentError, match="sigma: was 0.25, now 0.5"):
        train_classifier(tiny_config(tiny_idx_dir, epochs=1, sigma=0.5), tmp_path / "run", resume=True)
    train_classifier(tiny_config(tiny_idx_dir, epochs=1, sigma=0.5), tmp_path / "run", overwrite=True)


def test_stability_loss_is_cross_entropy_plus_weighted_kl():
    torch.manual_seed(0)
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    p, q = F.softmax(a, 1), F.softmax(b, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    assert stability_loss(a, b, y, 6.0).item() == pytest.approx(
        (F.cross_entropy(a, y) + 6.0 * kl).item(), rel=1e-5
    )
    assert stability_loss(a, a, y, 6.0).item() == pytest.approx(F.cross_entropy(a, y).item(), rel=1e-6)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("epochs", 0, "epochs"),
        ("batch_size", -1, "batch_size"),
        ("lr", 0.0, "lr"),
        ("precision", "fp8", "precision"),
        ("sigma", -0.5, "sigma"),
    ],
)
def test_bad_training_parameters_are_clear_errors(tiny_idx_dir, tmp_path, field, value, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(tiny_config(tiny_idx_dir, **{field: value}), tmp_path / "run").run()
    assert not (tmp_path / "run" / "config.json").exists()


def test_resume_from_the_middle_of_an_epoch_matches_an_uninterrupted_run(tiny_idx_dir, tmp_path):
    cfg = dict(epochs=2, save_every_steps=1)
    train_classifier(tiny_config(tiny_idx_dir, **cfg), tmp_path / "straight")

    def crash_in_second_epoch(epoch, step, total):
        if epoch == 1 and step == 3:
            raise Crash

    with pytest.raises(Crash):
        Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "resumed").run(on_step=crash_in_second_epoch)
    assert load_file(tmp_path / "resumed" / "train_state.pt")["step"] == 2
    log = Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "resumed").run(resume=True)
    straight_log = train_classifier(tiny_config(tiny_idx_dir, **cfg), tmp_path / "again")
    assert log["train_loss"].tolist() == pytest.approx(straight_log["train_loss"].tolist(), rel=1e-6)
    a = load_file(tmp_path / "straight" / "checkpoint.pt")["state_dict"]
    b = load_file(tmp_path / "resumed" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetuning_starts_from_a_checkpoint_without_its_last_layer(tiny_idx_dir, tmp_path):
    train_classifier(tiny_config(tiny_idx_dir, epochs=1), tmp_path / "base")
    trainer = Trainer(
        tiny_config(tiny_idx_dir, epochs=1, finetune=str(tmp_path / "base" / "checkpoint.pt"), lr=1e-9),
        tmp_path / "tuned",
    )
    trainer.run()
    base = load_file(tmp_path / "base" / "checkpoint.pt")["state_dict"]
    tuned = load_file(tmp_path / "tuned" / "checkpoint.pt")["state_dict"]
    first_conv = "net.features.0.weight"
    assert torch.allclose(base[first_conv], tuned[first_conv], atol=1e-6)  # carried over (lr ~ 0)
    assert not torch.allclose(
        base["net.classifier.3.weight"], tuned["net.classifier.3.weight"]
    )  # re-initialised head


@pytest.mark.parametrize("layout", ["reference", "denoised-smoothing", "generic"])
def test_finetuning_reads_the_published_checkpoint_layouts(tiny_idx_dir, tmp_path, layout):
    train_classifier(tiny_config(tiny_idx_dir, epochs=1), tmp_path / "base")
    base = load_file(tmp_path / "base" / "checkpoint.pt")["state_dict"]
    net = {k[len("net.") :]: v for k, v in base.items() if k.startswith("net.")}
    if layout == "reference":  # model_ckpt.torch: model.module.* plus the learned normalisation
        obj = {f"model.module.{k}": v for k, v in net.items()}
        obj |= {"norm.module.mu": torch.zeros(1, 1, 1, 1), "norm.module.log_sig": torch.zeros(1, 1, 1, 1)}
    elif layout == "denoised-smoothing":  # checkpoint.pth.tar: DataParallel(Sequential(normalize, model))
        obj = {"arch": "cifar_wrn40", "epoch": 1, "state_dict": {f"module.1.{k}": v for k, v in net.items()}}
    else:  # what many training scripts save: {"state_dict": ..., "epoch": ...}
        obj = {"state_dict": base, "epoch": 1}
    torch.save(obj, tmp_path / "published.pt")
    Trainer(
        tiny_config(tiny_idx_dir, epochs=1, finetune=str(tmp_path / "published.pt"), lr=1e-9),
        tmp_path / "tuned",
    ).run()
    tuned = load_file(tmp_path / "tuned" / "checkpoint.pt")["state_dict"]
    assert torch.allclose(base["net.features.0.weight"], tuned["net.features.0.weight"], atol=1e-6)
    assert not torch.allclose(base["net.classifier.3.weight"], tuned["net.classifier.3.weight"])


def test_resuming_from_an_earlier_save_drops_the_log_rows_trained_again(tiny_idx_dir, tmp_path):
    class Crash(Exception):
        pass

    def crash_in_fourth_epoch(epoch, step, total):
        if epoch == 3 and step == 1:
            raise Crash

    cfg = dict(epochs=4, save_every=2, train_limit=64)
    with pytest.raises(Crash):  # epochs 1-3 logged, the last save after epoch 2
        Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "run").run(on_step=crash_in_fourth_epoch)
    log = Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "run").run(resume=True)
    assert log["epoch"].tolist() == [1, 2, 3, 4]


def test_a_start_that_fails_on_bad_input_leaves_no_folder_behind(tiny_idx_dir, tmp_path):
    with pytest.raises(smoothcore.DataError):
        Trainer(tiny_config(tmp_path / "no-such-data", epochs=1), tmp_path / "run").run()
    assert not (tmp_path / "run").exists()
    with pytest.raises(smoothcore.CheckpointError):
        Trainer(
            tiny_config(tiny_idx_dir, epochs=1, finetune=str(tmp_path / "missing.pt")), tmp_path / "run"
        ).run()
    assert not (tmp_path / "run").exists()
    assert (
        len(Trainer(tiny_config(tiny_idx_dir, epochs=1), tmp_path / "run").run()) == 1
    )  # the corrected rerun just works


def test_resume_continues_the_global_random_stream_of_dropout(tiny_idx_dir, tmp_path):
    """A model that draws from torch's global generator (dropout) resumes into the identical weights."""
    from torch import nn

    from smoothcore.plugins import use_plugins
    from tests.test_plugins import plugin_module

    def dropout_mlp(*, num_classes, in_channels, image_size):
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size**2, 32),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(32, num_classes),
        )

    def register_classifiers(register):
        register("dropout-mlp", dropout_mlp)

    use_plugins(plugin_module("acme_dropout", register_classifiers=register_classifiers))
    cfg = dict(model="dropout-mlp", epochs=2, save_every_steps=1, train_limit=96)
    train_classifier(tiny_config(tiny_idx_dir, **cfg), tmp_path / "straight")

    class Crash(Exception):
        pass

    def crash(epoch, step, total):
        if epoch == 1 and step == 3:
            raise Crash

    with pytest.raises(Crash):
        Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "resumed").run(on_step=crash)
    Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "resumed").run(resume=True)
    a = load_file(tmp_path / "straight" / "checkpoint.pt")["state_dict"]
    b = load_file(tmp_path / "resumed" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("state", [{"epoch": 1}, [1, 2, 3], {"model": {"bogus": torch.zeros(1)}, "epoch": 1}])
def test_resuming_from_a_damaged_train_state_is_a_clear_error(tiny_idx_dir, tmp_path, state):
    cfg = dict(epochs=2, train_limit=32)
    Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "run").run()
    torch.save(state, tmp_path / "run" / "train_state.pt")
    with pytest.raises(smoothcore.CheckpointError, match="(?s)train_state.pt is damaged.*--overwrite"):
        Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "run").run(resume=True)


def test_a_resume_that_reads_other_training_data_is_refused(tiny_idx_dir, tmp_path):
    import shutil

    from tests.conftest import write_idx

    other = tmp_path / "other-data"
    shutil.copytree(tiny_idx_dir, other)
    write_idx(other / "train-images-idx3-ubyte.gz", np.zeros((64, 28, 28), dtype=np.uint8))
    cfg = dict(epochs=2, save_every=1, train_limit=32)

    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    with pytest.raises(Stop):
        Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "run").run(on_epoch=stop)
    with pytest.raises(ExperimentError, match="reads other training data"):
        Trainer(tiny_config(other, **cfg), tmp_path / "run").run(resume=True)
    assert len(Trainer(tiny_config(tiny_idx_dir, **cfg), tmp_path / "run").run(resume=True)) == 2


def test_options_added_after_a_run_was_made_do_not_block_its_resume():
    from smoothcore.experiment import config_diff

    old = {"lr": 0.1, "epochs": 5}
    assert config_diff(old, {"lr": 0.1, "epochs": 5, "sgd_lr": 1e-5}) == []
    assert config_diff(old, {"lr": 0.2, "epochs": 5}) == ["lr: was 0.1, now 0.2"]
    assert config_diff(old, {"lr": 0.1}) == ["epochs: was 5, now None"]


def test_a_training_state_restores_everything_it_saves():
    """TrainState (what train_state.pt holds): a fresh state loaded from a saved one continues identically."""
    import copy

    from torch import nn

    from smoothcore.trainer_base import TrainState

    def state(seed: int) -> TrainState:
        torch.manual_seed(seed)
        model = nn.Linear(3, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        rngs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
        return TrainState(model, optimizer, scheduler, *rngs)

    def step(s: TrainState) -> torch.Tensor:
        x = torch.rand(4, 3, generator=s.noise_rng)
        s.optimizer.zero_grad()
        s.model(x).sum().backward()
        s.optimizer.step()
        s.scheduler.step()
        return torch.randperm(5, generator=s.order_rng)

    trained = state(0)
    step(trained)
    trained.epoch = 1
    resumed = state(7)
    resumed.load_state_dict(
        copy.deepcopy(trained.state_dict())
    )  # as read back from train_state.pt: no tensor shared
    assert resumed.epoch == 1
    assert torch.equal(step(resumed), step(trained))
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), trained.model.parameters()))
    assert resumed.optimizer.param_groups[0]["lr"] == trained.optimizer.param_groups[0]["lr"] == 0.025


def test_resume_with_more_epochs_extends_a_finished_run_on_the_longer_cosine(tiny_idx_dir, tmp_path):
    """2 epochs, then --resume with epochs=4: two more epochs, the configuration records 4, and the learning rate
    continues as a 4-epoch cosine schedule would at its middle (so it is not a 4-epoch run: see extend_cosine)."""
    import math

    train_classifier(tiny_config(tiny_idx_dir, epochs=2), tmp_path / "run")
    log = Trainer(tiny_config(tiny_idx_dir, epochs=4), tmp_path / "run").run(resume=True)
    assert log["epoch"].tolist() == [1, 2, 3, 4]
    import json

    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 4
    steps = 64 // 16  # tiny_idx_dir: 64 training images, batch 16
    lr0 = 0.05
    # the last step of epoch 3 on a 4-epoch cosine, and 0 at the end
    assert log["lr"].iloc[2] == pytest.approx(
        lr0 * (1 + math.cos(math.pi * 3 * steps / (4 * steps))) / 2, rel=1e-6
    )
    assert log["lr"].iloc[3] == pytest.approx(0.0, abs=1e-12)
    assert log["lr"].iloc[1] == pytest.approx(
        0.0, abs=1e-12
    )  # the first 2 epochs annealed to 0 on their own plan
    straight = train_classifier(tiny_config(tiny_idx_dir, epochs=4), tmp_path / "straight")
    assert straight["lr"].iloc[1] == pytest.approx(lr0 / 2)  # why an extension is not a 4-epoch run
    with pytest.raises(ExperimentError, match="epochs: was 4, now 3"):
        Trainer(tiny_config(tiny_idx_dir, epochs=3), tmp_path / "run").run(resume=True)
