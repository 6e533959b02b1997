"""Denoisers: architectures that load denoised-smoothing checkpoints, load_denoiser, objectives, stacking."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import smoothcore
from smoothcore import CheckpointError, ConfigError
from smoothcore.denoise import denoiser_checkpoint
from smoothcore_denoisers import DnCNN, MemNet
from smoothcore_denoisers.training import DenoiserConfig, DenoiserTrainer, denoiser_loss, train_denoiser


# -- the original denoised-smoothing modules, written out independently, to compare against -------------------------
class OriginalDnCNN(nn.Module):
    def __init__(self, depth=17, n_channels=64, image_channels=1):
        super().__init__()
        layers = [nn.Conv2d(image_channels, n_channels, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(n_channels, n_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(n_channels, eps=0.0001, momentum=0.95),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(n_channels, image_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.dncnn(x)


class OriginalBNReLUConv(nn.Sequential):
    def __init__(self, in_channels, channels, k=3, s=1, p=1):
        super().__init__()
        self.add_module("bn", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, channels, k, s, p, bias=False))


class OriginalResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.relu_conv1 = OriginalBNReLUConv(channels, channels)
        self.relu_conv2 = OriginalBNReLUConv(channels, channels)

    def forward(self, x):
        residual = x
        out = self.relu_conv1(x)
        out = self.relu_conv2(out)
        return out + residual


class OriginalMemoryBlock(nn.Module):
    def __init__(self, channels, num_resblock, num_memblock):
        super().__init__()
        self.recursive_unit = nn.ModuleList([OriginalResidualBlock(channels) for _ in range(num_resblock)])
        self.gate_unit = OriginalBNReLUConv((num_resblock + num_memblock) * channels, channels, 1, 1, 0)

    def forward(self, x, ys):
        xs = []
        for layer in self.recursive_unit:
            x = layer(x)
            xs.append(x)
        gate_out = self.gate_unit(torch.cat(xs + ys, 1))
        ys.append(gate_out)
        return gate_out


class OriginalMemNet(nn.Module):
    def __init__(self, in_channels, channels, num_memblock, num_resblock):
        super().__init__()
        self.feature_extractor = OriginalBNReLUConv(in_channels, channels)
        self.reconstructor = OriginalBNReLUConv(channels, in_channels)
        self.dense_memory = nn.ModuleList(
            [OriginalMemoryBlock(channels, num_resblock, i + 1) for i in range(num_memblock)]
        )

    def forward(self, x):
        residual = x
        out = self.feature_extractor(x)
        ys = [out]
        for memory_block in self.dense_memory:
            out = memory_block(out, ys)
        return self.reconstructor(out) + residual


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
            elif isinstance(m, nn.Conv2d):
                m.weight.mul_(0.3)
    return model.eval()


@pytest.mark.parametrize(
    "arch,original,module_prefix",
    [
        ("cifar_dncnn", lambda: OriginalDnCNN(17, 64, 3), ""),
        ("cifar_dncnn_wide", lambda: OriginalDnCNN(17, 128, 3), ""),
        ("imagenet_dncnn", lambda: OriginalDnCNN(17, 64, 3), "module."),
        ("memnet", lambda: OriginalMemNet(3, 64, 3, 6), ""),
        ("imagenet_memnet", lambda: OriginalMemNet(3, 64, 3, 6), "module."),
    ],
)
def test_denoised_smoothing_checkpoints_give_the_original_outputs(tmp_path, arch, original, module_prefix):
    net = randomise(original())
    ckpt = {
        "epoch": 90,
        "arch": arch,
        "state_dict": {module_prefix + k: v for k, v in net.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": []},
    }
    torch.save(ckpt, tmp_path / "checkpoint.pth.tar")
    loaded = smoothcore.load_denoiser(tmp_path / "checkpoint.pth.tar")
    assert not loaded.training and loaded.in_channels == 3
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_dncnn_has_the_reference_layout():
    net = DnCNN(3, 17, 64)
    convs = [m for m in net.dncnn if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.dncnn if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 17 and len(bns) == 15
    assert all(bn.eps == 1e-4 and bn.momentum == 0.95 for bn in bns)
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    keys = set(net.state_dict())
    assert {
        "dncnn.0.weight",
        "dncnn.0.bias",
        "dncnn.2.weight",
        "dncnn.3.running_var",
        "dncnn.47.weight",
    } <= keys


def test_memnet_gates_see_the_growing_long_term_memory():
    net = MemNet(1, 64, 3, 6)
    assert [b.gate_unit.conv.in_channels for b in net.dense_memory] == [7 * 64, 8 * 64, 9 * 64]
    assert net(torch.rand(2, 1, 12, 12)).shape == (2, 1, 12, 12)


def test_own_denoiser_checkpoint_round_trips(tmp_path):
    net = randomise(DnCNN(1, 5, 8))
    torch.save(
        denoiser_checkpoint(net, arch="dncnn", params={"depth": 5, "channels": 8}, in_channels=1),
        tmp_path / "d.pt",
    )
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(smoothcore.load_denoiser(tmp_path / "d.pt")(x), net(x))


def test_unknown_denoiser_architecture_is_named(tmp_path):
    torch.save({"arch": "cifar_unet", "state_dict": {}}, tmp_path / "d.pth.tar")
    with pytest.raises(CheckpointError, match="unknown denoiser architecture 'cifar_unet'.*cifar_dncnn"):
        smoothcore.load_denoiser(tmp_path / "d.pth.tar")


@pytest.mark.parametrize("objective", ["mse", "stability", "classification"])
def test_each_objective_reduces_its_loss_on_a_small_batch(objective):
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    den = DnCNN(1, 4, 8)
    noise = smoothcore.noise("uniform", sigma=0.3, dim=64)
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 4, (32,))
    noisy = noise.sample(x, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(den.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss = denoiser_loss(objective, den(noisy), x, y, classifier)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(denoiser_loss(objective, den(noisy), x, y, classifier).detach()) < 0.7 * first


def test_train_denoiser_writes_best_and_last_and_lowers_the_error(fashion_dir, tmp_path):
    cfg = DenoiserConfig(
        dataset="fashion-mnist",
        data_dir=str(fashion_dir),
        arch="dncnn",
        arch_params={"depth": 4, "channels": 8},
        noise="ssn",
        sigma=0.5,
        epochs=2,
        batch_size=32,
        lr=3e-3,
        train_limit=600,
        eval_limit=100,
    )
    log = train_denoiser(cfg, tmp_path / "den")
    assert (tmp_path / "den" / "denoiser.pt").is_file() and (tmp_path / "den" / "denoiser_best.pt").is_file()
    assert log["val_mse"].iloc[-1] < 0.5 * log["noisy_mse"].iloc[-1]
    assert smoothcore.load_denoiser(tmp_path / "den" / "denoiser_best.pt").in_channels == 1


def test_classifier_objectives_need_a_classifier(tmp_path):
    with pytest.raises(ConfigError, match="needs a frozen classifier"):
        DenoiserTrainer(DenoiserConfig(objective="stability", sigma=0.5), tmp_path / "d")


def test_denoisers_take_one_or_three_channels():
    with pytest.raises(ConfigError, match="1- or 3-channel"):
        DnCNN(4)


def tiny_denoiser_config(data_dir, **overrides) -> DenoiserConfig:
    """A 3-layer, 4-channel DnCNN under uniform noise on the tiny IDX fixture, with ``overrides``."""
    base = dict(
        dataset="fashion-mnist",
        data_dir=str(data_dir),
        arch="dncnn",
        arch_params={"depth": 3, "channels": 4},
        noise="uniform",
        sigma=0.3,
        batch_size=16,
        eval_limit=16,
    )
    return DenoiserConfig(**{**base, **overrides})


def test_denoiser_training_resumes_to_the_uninterrupted_result(tiny_idx_dir, tmp_path):
    from smoothcore.checkpoints import load_file

    def cfg():
        return tiny_denoiser_config(tiny_idx_dir, epochs=3, sgd_after=2)

    DenoiserTrainer(cfg(), tmp_path / "straight").run()

    class Stop(Exception):
        pass

    def stop(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        DenoiserTrainer(cfg(), tmp_path / "resumed").run(on_epoch=stop)
    log = DenoiserTrainer(cfg(), tmp_path / "resumed").run(resume=True)
    assert log["optimizer"].tolist() == ["adam", "adam", "sgd"]
    a = load_file(tmp_path / "straight" / "denoiser.pt")["state_dict"]
    b = load_file(tmp_path / "resumed" / "denoiser.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sgd_after", [0, 1])
def test_the_switch_to_sgd_uses_the_sgd_learning_rate_and_the_reference_weight_decay(
    tiny_idx_dir, tmp_path, sgd_after
):
    cfg = tiny_denoiser_config(tiny_idx_dir, epochs=2, train_limit=32, sgd_after=sgd_after, sgd_lr=3e-4)
    assert cfg.weight_decay == 1e-4  # the reference's Adam default
    log = DenoiserTrainer(cfg, tmp_path / "run").run()
    assert log["optimizer"].tolist() == ["adam"] * sgd_after + ["sgd"] * (2 - sgd_after)
    assert log["lr"].iloc[-1] == pytest.approx(3e-4)


def test_train_denoiser_cli_trains_then_has_nothing_left_to_do_on_resume(tiny_idx_dir, tmp_path):
    from click.testing import CliRunner

    from smoothcore.cli import cli

    args = [
        "train-denoiser",
        "--data-dir",
        str(tiny_idx_dir),
        "--noise",
        "dssn",
        "--sigma",
        "0.25",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--eval-limit",
        "16",
        "--arch-param",
        "depth=3",
        "--out",
        str(tmp_path / "d"),
    ]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0 and "saved" in first.output, first.output
    again = CliRunner().invoke(cli, [*args, "--resume"])
    assert again.exit_code == 0 and "nothing to train" in again.output and "saved" not in again.output
