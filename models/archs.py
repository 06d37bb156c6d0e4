"""ANN architectures of the model zoo (torch).

Only ops that export to plain ONNX and that onnx2burst converts: Conv, BatchNorm
(folded by the converter), ReLU, AveragePool/MaxPool, Add, GlobalAveragePool,
Flatten, Gemm. No Dropout.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


# --------------------------------------------------------------------------- VGG
class VGG(nn.Module):
    """VGG-style CNN: stages of (Conv3x3-BN-ReLU) x n followed by a 2x2 pool, then
    Flatten, Linear-ReLU, Linear.

    ``cfg`` lists output channels, ``"P"`` marks a pool. ``pool`` is "avg"
    (AveragePool, default: exact under rate coding) or "max" (MaxPool)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, pool: str = "avg",
                 cfg: Sequence = (32, 32, "P", 64, 64, "P", 128, 128, "P"),
                 hidden: int = 128, input_size: int = 28):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', not {pool!r}")
        layers: list[nn.Module] = []
        c, s = in_channels, input_size
        for v in cfg:
            if v == "P":
                layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
                s //= 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * s * s, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


# ------------------------------------------------------------------------ ResNets
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, + shortcut, then ReLU. The shortcut is the
    identity, or a 1x1 conv + BN (option B) when stride or width changes."""
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem (stride 1), stages of BasicBlocks (the first
    block of every stage after the first has stride 2), global average pool, Linear.

    ``reduction``: if set, a 1x1 conv (no activation) first maps the input channels
    (e.g. the 2B voxel channels of an event frame) to ``reduction`` channels."""

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], in_channels: int = 1,
                 num_classes: int = 10, reduction: int | None = None):
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError("blocks and widths must have the same length")
        c = in_channels
        if reduction is not None:
            self.reduce = nn.Conv2d(c, reduction, 1, bias=True)
            c = reduction
        else:
            self.reduce = nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(c, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages = []
        c = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layer = []
            for j in range(n):
                layer.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
            stages.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last BN of each residual branch: every block starts as identity
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        x = self.stem(self.reduce(x))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


def vgg(in_channels: int = 1, num_classes: int = 10, pool: str = "avg", **kw) -> VGG:
    """VGG for Fashion-MNIST: 32-32-P-64-64-P-128-128-P, FC 1152-128-10."""
    return VGG(in_channels, num_classes, pool=pool, **kw)


def resnet20(in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64)) -> ResNet:
    """ResNet-20 (He et al. 2016, CIFAR variant): 3 stages x 3 BasicBlocks, 16/32/64
    channels, option-B (1x1 conv + BN) shortcuts where the shape changes."""
    return ResNet((3, 3, 3), widths, in_channels, num_classes)


def resnet18(in_channels: int = 18, num_classes: int = 10, widths=(16, 32, 64, 128),
             reduction: int | None = 3) -> ResNet:
    """Narrow ResNet-18 for event voxel frames with 2B channels (B=9 -> 18): a 1x1
    "reduction" conv to ``reduction`` channels (the authors map the voxel channels to
    3), then a CIFAR-style ResNet-18 (4 stages x 2 BasicBlocks, ``widths``)."""
    return ResNet((2, 2, 2, 2), widths, in_channels, num_classes, reduction=reduction)


# ------------------------------------------------------------------ detector
class Detector(nn.Module):
    """YOLO-style single-stage detector for 64x64 canvases (``models/detect_data.py``).

    Backbone Conv3x3-BN-act with strides 2, 2, 1, 2, 1 (64 -> 32 -> 16 -> 8); a neck that
    upsamples the stride-8 map (nearest), concatenates it with the stride-4 one and fuses them
    (1x1 then 3x3); two heads (1x1 convs) of ``5 + num_classes`` channels per cell at strides 4
    and 8: ``tx, ty, tw, th, objectness, class logits`` (one box per cell, decoded by
    ``models.detect.decode``). ``act``: "relu" or "leaky" (LeakyReLU, slope 0.1)."""

    def __init__(self, num_classes: int = 10, act: str = "relu", widths=(16, 32, 64)):
        super().__init__()
        if act not in ("relu", "leaky"):
            raise ValueError(f"act must be 'relu' or 'leaky', not {act!r}")

        def cba(cin, cout, k, s):
            a = nn.ReLU(inplace=True) if act == "relu" else nn.LeakyReLU(0.1, inplace=True)
            return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), a)

        w1, w2, w3 = widths
        self.stem = cba(1, w1, 3, 2)
        self.s4 = nn.Sequential(cba(w1, w2, 3, 2), cba(w2, w2, 3, 1))
        self.s8 = nn.Sequential(cba(w2, w3, 3, 2), cba(w3, w3, 3, 1))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(cba(w2 + w3, w2, 1, 1), cba(w2, w2, 3, 1))
        self.head4 = nn.Conv2d(w2, 5 + num_classes, 1)
        self.head8 = nn.Conv2d(w3, 5 + num_classes, 1)

    def forward(self, x):
        f4 = self.s4(self.stem(x))
        f8 = self.s8(f4)
        p4 = self.fuse(torch.cat([self.up(f8), f4], 1))
        return self.head4(p4), self.head8(f8)


def detector(num_classes: int = 10, act: str = "relu") -> Detector:
    return Detector(num_classes, act)


ARCHS = {"vgg": vgg, "resnet20": resnet20, "resnet18": resnet18}


def build(arch: str, in_channels: int, num_classes: int = 10, pool: str = "avg") -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    if arch == "vgg":
        return vgg(in_channels, num_classes, pool=pool)
    if pool != "avg":
        raise ValueError(f"--pool only applies to vgg (the ResNets use global average pooling)")
    return ARCHS[arch](in_channels, num_classes)
