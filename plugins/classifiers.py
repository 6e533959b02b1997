"""Built-in base classifiers: a small CNN, WideResNet-40-2 (the paper's CIFAR-10 model), CIFAR ResNet-110,
ImageNet ResNet-50 and any torchvision classification model (``torchvision:<name>``).

Parameter names follow the standard implementations (WRN: xternalz/WideResNet-pytorch; ResNet-110: the
CIFAR ResNet of Cohen et al.'s code) so that published weights load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smoothcore.errors import ConfigError
from smoothcore.hookspecs import hookimpl


# -- small CNN ------------------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Two conv blocks (width and 2 x width channels, batch norm, max-pool) and a 128-unit hidden layer; 28x28 or 32x32."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, width: int = 16, batch_norm: bool = True
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ConfigError(f"the cnn needs an image size divisible by 4, got {image_size}")

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=not batch_norm),
            norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=not batch_norm),
            norm(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 4) ** 2, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# -- WideResNet ---------------------------------------------------------------------------------------------------
class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in the standard implementation: the shortcut of a widening block sees the pre-activated input.
        if self.equal_in_out:
            out = self.relu1(self.bn1(x))
            out = self.relu2(self.bn2(self.conv1(out)))
        else:
            x = self.relu1(self.bn1(x))
            out = self.relu2(self.bn2(self.conv1(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return (x if self.equal_in_out else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(num_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k with the standard parameter names (``conv1``, ``block{1,2,3}.layer.N...``, ``bn1``, ``fc``)."""

    def __init__(
        self,
        depth: int = 40,
        num_classes: int = 10,
        widen_factor: int = 2,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.num_features = channels[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(out, 8) on 32x32 inputs
        return self.fc(out)


# -- CIFAR ResNet (He et al. 2016, as in Cohen et al.'s code) ------------------------------------------------------
class CifarBasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 110, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [CifarBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [CifarBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# -- torchvision ----------------------------------------------------------------------------------------------------
class RepeatChannels(nn.Module):
    """Feeds grey images to a 3-channel network by repeating the channel."""

    def __init__(self, net: nn.Module, times: int) -> None:
        super().__init__()
        self.net = net
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.repeat(1, self.times, 1, 1))


def torchvision_model(
    *, num_classes: int, in_channels: int, image_size: int, variant: str | None = None
) -> nn.Module:
    import torchvision.models as tvm

    if variant is None:
        raise ConfigError(
            "give the torchvision architecture as torchvision:<name>, for example torchvision:resnet18"
        )
    available = tvm.list_models(module=tvm)
    if variant not in available:
        raise ConfigError(
            f"torchvision has no classification model {variant!r}; available: {', '.join(sorted(available))}"
        )
    net = tvm.get_model(variant, weights=None, num_classes=num_classes)
    if in_channels == 1:
        net = RepeatChannels(net, 3)
    elif in_channels != 3:
        raise ConfigError(f"torchvision models take 1 or 3 channels, got {in_channels}")
    return net


def resnet50(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    import torchvision.models as tvm

    if in_channels != 3:
        raise ConfigError(f"resnet50 takes 3-channel images, got {in_channels}")
    return tvm.resnet50(weights=None, num_classes=num_classes)


def cnn(
    *, num_classes: int, in_channels: int, image_size: int, width: int = 16, batch_norm: bool = True
) -> nn.Module:
    return SmallCNN(num_classes, in_channels, image_size, width, bool(batch_norm))


def wrn40(
    *, num_classes: int, in_channels: int, image_size: int, widen_factor: int = 2, drop_rate: float = 0.0
) -> nn.Module:
    return WideResNet(40, num_classes, widen_factor, in_channels, drop_rate)


def wrn_compat(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    depth: int = 40,
    widen_factor: int = 2,
    drop_rate: float = 0.0,
) -> nn.Module:
    """WideResNetCompat: the WideResNets of denoised-smoothing's classifiers (``cifar_wrn40``: WRN-40-10,
    ``cifar_wrn``: WRN-28-10), whose parameter names are this project's."""
    return WideResNet(depth, num_classes, widen_factor, in_channels, drop_rate)


def resnet110(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(110, num_classes, in_channels)


@hookimpl
def register_classifiers(register) -> None:
    register("cnn", cnn, description="small CNN (2 conv blocks, 16/32 channels) for 28x28 and 32x32 images")
    register("wrn40", wrn40, description="WideResNet-40-2, the paper's CIFAR-10 model")
    register(
        "wrn40-compat",
        wrn_compat,
        description="WideResNetCompat: the WideResNet (depth, widen_factor) of denoised-smoothing "
        "checkpoint.pth.tar classifiers",
        compat="denoised-smoothing",
    )
    register("resnet110", resnet110, description="CIFAR ResNet-110 (Cohen et al.)")
    register("resnet50", resnet50, description="ResNet-50 from torchvision, the paper's ImageNet model")
    register(
        "torchvision",
        torchvision_model,
        description="any torchvision classification model: torchvision:<name>",
        variants=True,
    )
