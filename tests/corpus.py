"""A corpus of real-world-shaped ONNX graphs for the converter, built with no downloads.

Two families, every weight seeded:

- **torch**: small-width versions of the classic architectures (ResNet-18/50, VGG-11/16 with
  BatchNorm, MobileNetV2, DenseNet, SqueezeNet, GoogLeNet, ShuffleNetV2, an SE-ResNet),
  exported by ``torch.onnx.export(dynamo=False)`` (the TorchScript exporter) at opsets 11,
  13, 17 and 20. Each architecture has a home opset (``MODELS``); the same architectures at
  the other three opsets are ``MATRIX``.
- **helper**: graphs written with ``onnx.helper`` in the style of older exporters (Caffe2,
  CNTK, MXNet, the first ONNX model zoo): opset 7-9, weights listed among the graph inputs,
  residuals with ``Sum``, weights from ``Constant``/``ConstantOfShape`` nodes, BatchNorm
  unfused or as Mul/Add, ``Dropout``, ``LRN``, ``Softmax`` heads, ``Reshape`` with a
  hard-coded batch of 1, ``Gemm`` with transB (and alpha/beta), ``Flatten`` on axes 0/1/2,
  ``Clip`` with attributes, ``Upsample``, ``Pad`` with attributes.

Inputs are standard normal (``inputs``), the distribution of normalised images. The torch
models' BatchNorm statistics are measured on such inputs (as training would leave them), and
each classifier's last layer is re-centred (bias) and scaled (weights) so that its outputs have
mean 0 and standard deviation 1 per class over such inputs (SqueezeNet: its last conv, before
the ReLU): random-weight networks otherwise predict one class for nearly every input, which
makes top-1 agreement meaningless.

    from tests import corpus
    for spec in corpus.MODELS: model = spec.build()
    python -m tests.corpus --out DIR [--matrix]      # write the .onnx files and an index

``random_dag(rng)`` makes random small Conv/Gemm/Relu/Add/Concat/AveragePool/MaxPool graphs
for property tests.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["CorpusModel", "MODELS", "MATRIX", "ALL", "TORCH_OPSETS", "by_name", "inputs", "run_ann", "imagenet_resnet50",
           "random_dag", "CLAIMS", "FAMILIES", "family_models", "main"]

TORCH_OPSETS = (11, 13, 17, 20)
F = TensorProto.FLOAT


@dataclass(frozen=True)
class CorpusModel:
    """One corpus entry. ``inexact``: op types expected to be refused as not exact (empty: the
    model converts exactly); ``note``: what it exercises."""

    name: str
    family: str                      # "torch" or "helper"
    opset: int
    note: str
    builder: Callable[[], onnx.ModelProto] = field(repr=False, compare=False)
    inexact: tuple[str, ...] = ()
    batch1: bool = False             # the ANN hard-codes batch 1 (feed it one sample at a time)

    def build(self) -> onnx.ModelProto:
        """The model (cached: builds once per process; returns a copy)."""
        m = onnx.ModelProto()
        m.CopyFrom(_cached(self.name))
        return m


def inputs(model: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs of batch ``n`` for every graph input of ``model``."""
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal([n] + dims[1:]).astype(np.float32)
    return out


def run_ann(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch1: bool = False) -> np.ndarray:
    """The ANN's first output with stock onnxruntime (one sample at a time when ``batch1``)."""
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), _quiet(), providers=["CPUExecutionProvider"])
    if not batch1:
        return s.run(None, feeds)[0]
    n = next(iter(feeds.values())).shape[0]
    return np.concatenate([s.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(n)])


def _quiet():
    """onnxruntime session options without warnings (old models list weights among the inputs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


# ====================================================================== torch architectures
def _torch_nets():
    """The torch module classes (imported lazily: torch is optional)."""
    import torch
    from torch import nn
    import torch.nn.functional as tf

    def conv_bn(cin, cout, k=3, s=1, groups=1, act="relu"):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif act == "relu6":
            layers.append(nn.ReLU6(inplace=True))
        return nn.Sequential(*layers)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, cin, c, stride=1):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
            self.down = None
            if stride != 1 or cin != c:
                self.down = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, c, stride=1):
            super().__init__()
            out = c * 4
            self.body = nn.Sequential(conv_bn(cin, c, 1), conv_bn(c, c, 3, stride), conv_bn(c, out, 1, act=None))
            self.down = None
            if stride != 1 or cin != out:
                self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))

    class ResNet(nn.Module):
        def __init__(self, block, layers, widths, classes=10, stem=(3, 1)):
            super().__init__()
            k, s = stem   # (7, 2): the ImageNet stem
            self.stem = nn.Sequential(conv_bn(3, widths[0], k, s), nn.MaxPool2d(3, 2, 1))
            cin, stages = widths[0], []
            for k, (n, w) in enumerate(zip(layers, widths)):
                blocks = []
                for i in range(n):
                    blocks.append(block(cin, w, 2 if (i == 0 and k > 0) else 1))
                    cin = w * block.expansion
                stages.append(nn.Sequential(*blocks))
            self.stages = nn.Sequential(*stages)
            self.head = nn.Linear(cin, classes)

        def forward(self, x):
            x = self.stages(self.stem(x))
            return self.head(torch.flatten(tf.adaptive_avg_pool2d(x, 1), 1))

    class VGG(nn.Module):
        def __init__(self, cfg, classes=10, view=False):
            super().__init__()
            layers, cin = [], 3
            for v in cfg:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                    cin = v
            self.features = nn.Sequential(*layers)
            self.view = view
            self.classifier = nn.Sequential(nn.Linear(cin, 32), nn.ReLU(True), nn.Dropout(),
                                            nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, classes))
            self.head = self.classifier[-1]

        def forward(self, x):
            x = self.features(x)
            x = x.view(x.size(0), -1) if self.view else torch.flatten(x, 1)
            return self.classifier(x)

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hidden = cin * t
            layers = [] if t == 1 else [conv_bn(cin, hidden, 1, act="relu6")]
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
                       conv_bn(hidden, cout, 1, act=None)]
            self.conv = nn.Sequential(*layers)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            cfg = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 1, 1)]
            layers, cin = [conv_bn(3, 8, 3, 2, act="relu6")], 8
            for t, c, n, s in cfg:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(conv_bn(cin, 64, 1, act="relu6"))
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(64, classes)
            self.drop = nn.Dropout(0.2)

        def forward(self, x):
            x = tf.adaptive_avg_pool2d(self.features(x), 1)
            return self.head(self.drop(torch.flatten(x, 1)))

    class DenseLayer(nn.Module):
        def __init__(self, cin, growth, bn_size):
            super().__init__()
            self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, bn_size * growth, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth)
            self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

        def forward(self, feats):
            x = torch.cat(feats, 1)
            x = self.conv1(torch.relu(self.norm1(x)))
            return self.conv2(torch.relu(self.norm2(x)))

    class DenseNet(nn.Module):
        def __init__(self, growth=4, blocks=(2, 3, 2), init=8, bn_size=2, classes=10):
            super().__init__()
            self.conv0, self.norm0 = nn.Conv2d(3, init, 3, padding=1, bias=False), nn.BatchNorm2d(init)
            self.pool0 = nn.MaxPool2d(3, 2, 1)
            self.blocks, self.trans = nn.ModuleList(), nn.ModuleList()
            c = init
            for k, n in enumerate(blocks):
                layers = nn.ModuleList()
                for i in range(n):
                    layers.append(DenseLayer(c + i * growth, growth, bn_size))
                self.blocks.append(layers)
                c += n * growth
                if k < len(blocks) - 1:
                    self.trans.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                                                    nn.AvgPool2d(2, 2)))
                    c //= 2
            self.norm5 = nn.BatchNorm2d(c)
            self.head = nn.Linear(c, classes)

        def forward(self, x):
            x = self.pool0(torch.relu(self.norm0(self.conv0(x))))
            for k, layers in enumerate(self.blocks):
                feats = [x]
                for layer in layers:
                    feats.append(layer(feats))
                x = torch.cat(feats, 1)
                if k < len(self.trans):
                    x = self.trans[k](x)
            x = torch.relu(self.norm5(x))
            return self.head(torch.flatten(tf.adaptive_avg_pool2d(x, 1), 1))

    class Fire(nn.Module):
        def __init__(self, cin, s, e1, e3):
            super().__init__()
            self.squeeze = nn.Conv2d(cin, s, 1)
            self.e1, self.e3 = nn.Conv2d(s, e1, 1), nn.Conv2d(s, e3, 3, padding=1)

        def forward(self, x):
            x = torch.relu(self.squeeze(x))
            return torch.cat([torch.relu(self.e1(x)), torch.relu(self.e3(x))], 1)

    class SqueezeNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3), nn.ReLU(True), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(16, 4, 8, 8), Fire(16, 4, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(16, 8, 16, 16), Fire(32, 8, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(32, 12, 24, 24), Fire(48, 16, 32, 32))
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(64, classes, 1), nn.ReLU(True),
                                            nn.AdaptiveAvgPool2d(1))
            self.head = self.classifier[1]  # balanced before its ReLU

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    class Inception(nn.Module):
        def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
            super().__init__()
            self.b1 = conv_bn(cin, c1, 1)
            self.b2 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
            self.b3 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 3))
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, pp, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    class GoogLeNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 16, 3), nn.MaxPool2d(3, 2, ceil_mode=True), conv_bn(16, 24, 3))
            self.i3a = Inception(24, 8, 8, 12, 4, 4, 4)        # -> 28
            self.i3b = Inception(28, 12, 12, 16, 4, 8, 8)      # -> 44
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.i4a = Inception(44, 16, 8, 20, 4, 8, 8)       # -> 52
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(52, classes)

        def forward(self, x):
            x = self.i4a(self.pool(self.i3b(self.i3a(self.stem(x)))))
            return self.head(self.drop(torch.flatten(tf.adaptive_avg_pool2d(x, 1), 1)))

    def channel_shuffle(x, groups):
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(b, -1, h, w)

    class ShuffleBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            half = cout // 2
            if stride > 1:
                self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                             conv_bn(cin, half, 1))
            bin_ = cin if stride > 1 else half
            self.branch2 = nn.Sequential(conv_bn(bin_, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None),
                                         conv_bn(half, half, 1))

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 8, 3), nn.MaxPool2d(3, 2, 1))
            stages, cin = [], 8
            for c, n in ((16, 2), (32, 2), (64, 1)):
                blocks = [ShuffleBlock(cin, c, 2)] + [ShuffleBlock(c, c, 1) for _ in range(n - 1)]
                stages.append(nn.Sequential(*blocks))
                cin = c
            self.stages = nn.Sequential(*stages)
            self.conv5 = conv_bn(cin, 96, 1)
            self.head = nn.Linear(96, classes)

        def forward(self, x):
            x = self.conv5(self.stages(self.stem(x)))
            return self.head(x.mean([2, 3]))

    class SEBlock(nn.Module):
        def __init__(self, c, r=4):
            super().__init__()
            self.block = BasicBlock(c, c)
            self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

        def forward(self, x):
            y = self.block.bn2(self.block.conv2(torch.relu(self.block.bn1(self.block.conv1(x)))))
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(tf.adaptive_avg_pool2d(y, 1)))))
            return torch.relu(y * s + x)

    class SEResNet(nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.stem = conv_bn(3, 16, 3, 2)
            self.se1, self.se2 = SEBlock(16), SEBlock(16)
            self.head = nn.Linear(16, classes)

        def forward(self, x):
            x = self.se2(self.se1(self.stem(x)))
            return self.head(torch.flatten(tf.adaptive_avg_pool2d(x, 1), 1))

    return {
        "resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2], [8, 16, 32, 64]),
        "resnet50": lambda: ResNet(Bottleneck, [1, 2, 2, 1], [4, 8, 16, 32]),
        "resnet50_imagenet": lambda: ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], classes=1000, stem=(7, 2)),
        "vgg11bn": lambda: VGG([8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"], view=True),
        "vgg16bn": lambda: VGG([8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"]),
        "mobilenetv2": MobileNetV2,
        "densenet": DenseNet,
        "squeezenet": SqueezeNet,
        "googlenet": GoogLeNet,
        "shufflenetv2": ShuffleNetV2,
        "seresnet": SEResNet,
    }


def _randomise(net, seed: int) -> None:
    """Seeded weights: He-normal convs, small biases, BatchNorm with non-trivial statistics."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def _fit_batchnorm(net, seed: int, shape) -> None:
    """BatchNorm running statistics measured on N(0, 1) inputs (as training would leave them), so
    that each BN normalises what it sees: deep random nets otherwise map every input to nearly
    the same output. The affine part (gamma, beta) stays random."""
    import torch
    from torch import nn

    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    net.eval()
    for m in bns:
        m.train()
    rng = np.random.default_rng(seed + 2000)
    with torch.no_grad():
        for _ in range(4):
            net(torch.from_numpy(rng.standard_normal((64,) + tuple(shape)).astype(np.float32)))
    net.eval()


def _balance_torch_head(net, seed: int, shape) -> None:
    """Re-centre and scale the classifier so logits have mean 0, std 1 per class on N(0, 1) inputs."""
    import torch

    head = getattr(net, "head", None)
    if head is None:
        return
    x = torch.from_numpy(np.random.default_rng(seed + 1000).standard_normal((256,) + tuple(shape)).astype(np.float32))
    seen = []
    hook = head.register_forward_hook(lambda mod, i, o: seen.append(o))
    with torch.no_grad():
        net(x)
        hook.remove()
        y = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1)  # [K, samples (x positions)]
        mu, sd = y.mean(1), y.std(1).clamp_min(1e-6)
        head.weight.div_(sd.reshape((-1,) + (1,) * (head.weight.dim() - 1)))
        head.bias.copy_((head.bias - mu) / sd)


_TORCH_HOME = {  # arch -> (home opset, export options, note)
    "resnet18": (11, {}, "ResNet-18 layout (4 stages x 2 basic blocks): residual Add+Relu, 1x1 downsample "
                         "shortcuts (analog), stem MaxPool; Conv+BN fused by the exporter"),
    "resnet50": (13, {"constant_folding": False},
                 "ResNet-50 bottlenecks (1x1-3x3-1x1 x4) with projection shortcuts; exported without "
                 "constant folding"),
    "vgg11bn": (17, {}, "VGG-11 with BN and a 3-layer classifier with Dropout; x.view(x.size(0), -1) "
                        "gives a Shape/Gather/Concat/Reshape path on spikes"),
    "vgg16bn": (20, {"keep_bn": True}, "VGG-16 with BN exported with training=PRESERVE: BatchNormalization "
                                      "nodes unfused (folded by the converter)"),
    "mobilenetv2": (11, {}, "MobileNetV2: ReLU6 as Clip(0, 6) with Constant min/max, depthwise convs "
                            "(group = channels), inverted residuals whose Add has no ReLU"),
    "densenet": (13, {"keep_bn": True}, "DenseNet: Concat of all earlier features, pre-activation "
                                       "BN->ReLU->Conv (BN on a Concat of spikes), transitions with AveragePool"),
    "squeezenet": (17, {}, "SqueezeNet 1.1: Fire modules (Concat of 1x1 and 3x3 branches), MaxPool with "
                           "ceil_mode, a conv classifier with ReLU before the global pool"),
    "googlenet": (20, {}, "GoogLeNet/Inception: four parallel branches (one starting with a stride-1 "
                          "MaxPool) concatenated"),
    "shufflenetv2": (13, {}, "ShuffleNetV2: channel split (Split), channel shuffle (Reshape/Transpose/"
                             "Reshape with shapes computed from the tensor), ReduceMean head"),
    "seresnet": (17, {}, "SE-ResNet: squeeze-excitation (Sigmoid gate, Mul of two spiking tensors): "
                         "refused as not exact; converts with allow_inexact"),
}
_TORCH_INEXACT = {"seresnet": ("Sigmoid", "Mul")}
_TORCH_SHAPE = (3, 32, 32)


def _export_torch(arch: str, opset: int, seed: int, *, keep_bn: bool = False, constant_folding: bool = True,
                  dynamic: bool = True, shape=_TORCH_SHAPE) -> onnx.ModelProto:
    import torch

    net = _torch_nets()[arch]()
    _randomise(net, seed)
    _fit_batchnorm(net, seed, shape)
    net.eval()
    _balance_torch_head(net, seed, shape)
    f = io.BytesIO()
    kw = dict(opset_version=opset, input_names=["x"], output_names=["y"], do_constant_folding=constant_folding)
    if dynamic:
        kw["dynamic_axes"] = {"x": {0: "N"}, "y": {0: "N"}}
    if keep_bn:
        kw["training"] = torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros((1,) + tuple(shape)),), f, dynamo=False, **kw)
    m = onnx.load_from_string(f.getvalue())
    m.producer_name = f"pytorch {torch.__version__} (onnx2burst corpus: {arch})"
    return m


def imagenet_resnet50(seed: int = 0) -> onnx.ModelProto:
    """A ResNet-50 of ImageNet's size (torchvision's layout: 7x7/2 stem, [3, 4, 6, 3] bottlenecks,
    widths 64-512, 1000 classes) for a 224x224 input, seeded random weights, opset 17: the
    memory and time of converting a large network."""
    return _export_torch("resnet50_imagenet", 17, seed, shape=(3, 224, 224))


# ====================================================================== old-style helper graphs
node = helper.make_node


class _G:
    """A tiny graph builder: seeded weights, initializers listed among the graph inputs
    (IR version 3, as exporters did before IR 4), or as Constant nodes."""

    def __init__(self, seed: int, *, weights_as_inputs: bool = True, constant_nodes: bool = False):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.as_inputs = weights_as_inputs
        self.constant_nodes = constant_nodes
        self.k = 0

    def name(self, base):
        self.k += 1
        return f"{base}{self.k}"

    def weight(self, name, arr):
        arr = np.asarray(arr, np.float32)
        if self.constant_nodes:
            self.nodes.append(node("Constant", [], [name], name=name + "_const",
                                   value=numpy_helper.from_array(arr, name)))
        else:
            self.inits[name] = arr
        return name

    def he(self, *shape, gain=2.0):
        fan_in = int(np.prod(shape[1:]))
        return (self.rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)

    def conv(self, x, cin, cout, k=3, stride=1, pad=None, group=1, bias=True, name=None):
        name = name or self.name("conv")
        pad = k // 2 if pad is None else pad
        ins = [x, self.weight(name + "_W", self.he(cout, cin // group, k, k))]
        if bias:
            ins.append(self.weight(name + "_B", self.rng.standard_normal(cout) * 0.05))
        self.nodes.append(node("Conv", ins, [name], name=name, kernel_shape=[k, k], strides=[stride, stride],
                               pads=[pad] * 4, group=group))
        return name

    def bn(self, x, c, name=None, **attrs):
        name = name or self.name("bn")
        r = self.rng
        ins = [x] + [self.weight(f"{name}_{p}", v) for p, v in (
            ("scale", 0.5 + r.random(c)), ("bias", r.standard_normal(c) * 0.1),
            ("mean", r.standard_normal(c) * 0.1), ("var", 0.5 + r.random(c)))]
        self.nodes.append(node("BatchNormalization", ins, [name], name=name, epsilon=1e-5, **attrs))
        return name

    def op(self, op, ins, name=None, outputs=1, **attrs):
        name = name or self.name(op.lower())
        outs = [name] + [f"{name}_out{i}" for i in range(1, outputs)]
        self.nodes.append(node(op, list(ins), outs, name=name, **attrs))
        return name

    def relu(self, x):
        return self.op("Relu", [x])

    def gemm(self, x, k_in, k_out, name=None, trans_b=1, alpha=1.0, beta=1.0, gain=2.0):
        name = name or self.name("fc")
        w = self.he(k_out, k_in, gain=gain) / alpha
        w = w if trans_b else np.ascontiguousarray(w.T)
        b = self.rng.standard_normal(k_out) * 0.05 / beta
        attrs = {"transB": trans_b} if trans_b else {}
        if alpha != 1.0:
            attrs["alpha"] = alpha
        if beta != 1.0:
            attrs["beta"] = beta
        self.nodes.append(node("Gemm", [x, self.weight(name + "_W", w), self.weight(name + "_B", b)], [name],
                               name=name, **attrs))
        return name

    def model(self, opset: int, x_shape, y: str, y_shape, *, ir_version: int | None = None, out_name="y"):
        self.nodes.append(node("Identity", [y], [out_name], name="output_identity"))
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        g_inputs = [helper.make_tensor_value_info("x", F, x_shape)]
        if self.as_inputs:
            g_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
        g = helper.make_graph(self.nodes, "corpus", g_inputs, [helper.make_tensor_value_info(out_name, F, y_shape)],
                              inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx2burst corpus")
        m.ir_version = ir_version or {7: 3, 8: 3, 9: 4}.get(opset, 7)
        return m


def _center_head(model: onnx.ModelProto, head: str, seed: int) -> onnx.ModelProto:
    """Shift and scale the Gemm/Conv ``head`` (weights and bias initializers or Constant nodes)
    so that its output has mean 0 and std 1 per unit on standard-normal inputs."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(head, F, None))
    n = 256
    feeds = inputs(model, n, seed=seed + 1000)
    s = ort.InferenceSession(probe.SerializeToString(), _quiet(), providers=["CPUExecutionProvider"])
    if model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1:
        y = np.concatenate([s.run([head], {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(n)])
    else:
        y = s.run([head], feeds)[0]
    y = y.reshape(n, -1)
    mu, sd = y.mean(0), np.maximum(y.std(0), 1e-6)
    hnode = next(nd for nd in model.graph.node if nd.name == head)
    trans_b = any(a.name == "transB" and a.i for a in hnode.attribute)
    beta = next((a.f for a in hnode.attribute if a.name == "beta"), 1.0)

    def edit(name, fn):
        for t in model.graph.initializer:
            if t.name == name:
                t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)).astype(np.float32), name))
                return
        for nd in model.graph.node:
            if nd.op_type == "Constant" and nd.output[0] == name:
                a = nd.attribute[0]
                a.t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(a.t)).astype(np.float32), a.t.name))
                return
        raise KeyError(name)

    edit(hnode.input[1], lambda w: w / (sd[:, None] if trans_b or hnode.op_type == "Conv" else sd[None, :]))
    edit(hnode.input[2], lambda b: (b - mu / beta) / sd)
    return model


def caffenet_lrn_op7(seed=0):
    """CaffeNet/AlexNet from a Caffe2 export: LRN after ReLU, grouped conv, hard-coded batch 1."""
    g = _G(seed)
    x = g.relu(g.conv("x", 3, 16, 5, name="conv1"))
    x = g.op("LRN", [x], name="norm1", size=5, alpha=1e-4, beta=0.75, bias=1.0)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    x = g.relu(g.conv(x, 16, 32, 3, group=2, name="conv2"))
    x = g.op("LRN", [x], name="norm2", size=5, alpha=1e-4, beta=0.75, bias=1.0)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    x = g.relu(g.conv(x, 32, 32, 3, name="conv3"))
    x = g.op("Reshape", [x, _i64(g, "flat_shape", [1, -1])], name="reshape_batch1")
    x = g.op("Dropout", [g.relu(g.gemm(x, 32 * 7 * 7, 64, name="fc6"))], ratio=0.5)
    x = g.op("Dropout", [g.relu(g.gemm(x, 64, 64, name="fc7"))], ratio=0.5)
    x = g.gemm(x, 64, 10, name="fc8", gain=1.0)
    x = g.op("Softmax", [x], name="prob")
    return _center_head(g.model(7, [1, 3, 32, 32], x, [1, 10]), "fc8", seed)


def _i64(g: _G, name: str, values) -> str:
    g.inits[name] = np.asarray(values, np.int64)
    return name


def resnet_sum_op8(seed=0):
    """ONNX model zoo ResNet-v1 style (opset 8): unfused BatchNormalization (spatial=1), residual
    ``Sum``, GlobalAveragePool -> Flatten -> Gemm(transB)."""
    g = _G(seed)

    def block(x, cin, c, stride):
        y = g.relu(g.bn(g.conv(x, cin, c, 3, stride, bias=False), c, spatial=1))
        y = g.bn(g.conv(y, c, c, 3, bias=False), c, spatial=1)
        sc = x if stride == 1 and cin == c else g.bn(g.conv(x, cin, c, 1, stride, pad=0, bias=False), c, spatial=1)
        return g.relu(g.op("Sum", [y, sc]))

    x = g.relu(g.bn(g.conv("x", 3, 8, 3, bias=False), 8, spatial=1))
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = block(x, 8, 8, 1)
    x = block(x, 8, 16, 2)
    x = block(x, 16, 32, 2)
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x], axis=1)
    x = g.gemm(x, 32, 10, name="fc", gain=1.0)
    return _center_head(g.model(8, ["N", 3, 32, 32], x, ["N", 10]), "fc", seed)


def constant_weights_op9(seed=0):
    """Weights as Constant nodes, a bias from ConstantOfShape, BN as Mul/Add, Dropout, a Reshape
    hard-coding batch 1 then Flatten(axis=2), Gemm without transB (alpha, beta), Softmax."""
    g = _G(seed, weights_as_inputs=False, constant_nodes=True)
    w = g.weight("c1_W", g.he(8, 1, 3, 3))
    g.nodes.append(node("Constant", [], ["c1_Bshape"], name="c1_Bshape_const",
                        value=numpy_helper.from_array(np.array([8], np.int64), "c1_Bshape")))
    g.nodes.append(node("ConstantOfShape", ["c1_Bshape"], ["c1_B"], name="c1_B_fill",
                        value=helper.make_tensor("v", F, [1], [0.05])))
    g.nodes.append(node("Conv", ["x", w, "c1_B"], ["c1"], name="c1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    r = g.rng
    x = g.op("Mul", ["c1", g.weight("bn1_scale", (0.5 + r.random((1, 8, 1, 1))))], name="bn1_mul")
    x = g.op("Add", [x, g.weight("bn1_shift", r.standard_normal((8, 1, 1)) * 0.1)], name="bn1_add")
    x = g.op("Dropout", [g.relu(x)], ratio=0.1)
    x = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.relu(g.conv(x, 8, 16, 3, name="c2"))
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    g.nodes.append(node("Constant", [], ["r_shape"], name="r_shape_const",
                        value=numpy_helper.from_array(np.array([1, 1, -1], np.int64), "r_shape")))
    x = g.op("Reshape", [x, "r_shape"], name="reshape_batch1")
    x = g.op("Flatten", [x], name="flatten_axis2", axis=2)
    x = g.relu(g.gemm(x, 16 * 7 * 7, 32, name="fc1", trans_b=0, alpha=0.5, beta=2.0))
    x = g.gemm(x, 32, 10, name="fc2", trans_b=0, gain=1.0)
    x = g.op("Softmax", [x], name="prob", axis=1)
    return _center_head(g.model(9, [1, 1, 28, 28], x, [1, 10], ir_version=4), "fc2", seed)


def mobilenetv1_clip_op8(seed=0):
    """MobileNet-v1 style (opset 8): depthwise separable convs, unfused BN, ReLU6 as Clip with
    min/max attributes, AveragePool head, Flatten(axis=0) on a batch-1 model, Gemm."""
    g = _G(seed)

    def relu6(x):
        return g.op("Clip", [x], min=0.0, max=6.0)

    x = relu6(g.bn(g.conv("x", 3, 8, 3, 2, bias=False), 8))
    for cin, cout, s in ((8, 16, 1), (16, 24, 2), (24, 32, 1)):
        x = relu6(g.bn(g.conv(x, cin, cin, 3, s, group=cin, bias=False), cin))
        x = relu6(g.bn(g.conv(x, cin, cout, 1, pad=0, bias=False), cout))
    x = g.op("AveragePool", [x], kernel_shape=[8, 8])
    x = g.op("Flatten", [x], name="flatten_axis0", axis=0)
    x = g.gemm(x, 32, 10, name="fc", gain=1.0)
    return _center_head(g.model(8, [1, 3, 32, 32], x, [1, 10]), "fc", seed)


def fcn_upsample_op9(seed=0):
    """An FPN-like net (opset 9): Upsample (nearest, scales input), a three-way ``Sum`` with a
    skip, Pad with attributes, AveragePool counting pads, MatMul+Add head, Concat."""
    g = _G(seed)
    a = g.relu(g.conv("x", 3, 8, 3))
    b = g.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])
    b = g.relu(g.conv(b, 8, 8, 3))
    up = g.op("Upsample", [b, _f32(g, "up_scales", [1, 1, 2, 2])], mode="nearest")
    s = g.relu(g.op("Sum", [up, g.conv(a, 8, 8, 1, pad=0), g.conv(a, 8, 8, 3)]))
    c = g.op("Concat", [s, a], axis=1)
    p = g.op("Pad", [c], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant", value=0.0)
    x = g.relu(g.conv(p, 16, 16, 3, 2, pad=0))
    x = g.op("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x])
    w = g.weight("head_W", g.he(16, 10, gain=1.0))
    x = g.op("MatMul", [x, w], name="head_matmul")
    x = g.op("Add", [x, g.weight("head_B", np.zeros(10))], name="head")
    m = g.model(9, ["N", 3, 24, 24], x, ["N", 10])
    return _center_matmul_head(m, "head", seed)


def _f32(g: _G, name, values):
    g.inits[name] = np.asarray(values, np.float32)
    return name


def _center_matmul_head(model, add: str, seed: int):
    """``_center_head`` for MatMul(W) + Add(B): W [K_in, K], B [K]."""
    import onnxruntime as ort

    feeds = inputs(model, 256, seed=seed + 1000)
    s = ort.InferenceSession(model.SerializeToString(), _quiet(), providers=["CPUExecutionProvider"])
    y = s.run(None, feeds)[0]
    mu, sd = y.mean(0), np.maximum(y.std(0), 1e-6)
    inits = {t.name: t for t in model.graph.initializer}
    addn = next(nd for nd in model.graph.node if nd.name == add)
    mm = next(nd for nd in model.graph.node if nd.output[0] in addn.input)
    w, b = inits[mm.input[1]], inits[next(i for i in addn.input if i in inits)]
    w.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(w) / sd[None, :]).astype(np.float32), w.name))
    b.CopyFrom(numpy_helper.from_array(((numpy_helper.to_array(b) - mu) / sd).astype(np.float32), b.name))
    return model


def inception_lrn_op9(seed=0):
    """GoogLeNet from the first model zoo (opset 9 style): LRN in the stem, Inception branches
    with MaxPool, Concat, Dropout, Softmax; LRN is refused as not exact."""
    g = _G(seed)
    x = g.relu(g.conv("x", 3, 16, 3, name="conv1"))
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    x = g.op("LRN", [x], name="pool1_norm1", size=5, alpha=1e-4, beta=0.75)
    b1 = g.relu(g.conv(x, 16, 8, 1, pad=0))
    b2 = g.relu(g.conv(g.relu(g.conv(x, 16, 8, 1, pad=0)), 8, 12, 3))
    b3 = g.relu(g.conv(g.relu(g.conv(x, 16, 4, 1, pad=0)), 4, 4, 5))
    b4 = g.relu(g.conv(g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), 16, 4, 1, pad=0))
    x = g.op("Concat", [b1, b2, b3, b4], axis=1)
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Dropout", [x], ratio=0.4)
    x = g.op("Reshape", [x, _i64(g, "flat", [-1, 28])])
    x = g.gemm(x, 28, 10, name="loss3_classifier", gain=1.0)
    x = g.op("Softmax", [x], name="prob")
    return _center_head(g.model(9, ["N", 3, 16, 16], x, ["N", 10]), "loss3_classifier", seed)


def mlp_batch1_op7(seed=0):
    """An MNIST MLP from an early exporter (opset 7): Reshape [1, 784] hard-coding batch 1,
    Gemm with transB, Dropout, LogSoftmax head."""
    g = _G(seed)
    x = g.op("Reshape", ["x", _i64(g, "shape", [1, 784])], name="reshape_batch1")
    x = g.op("Dropout", [g.relu(g.gemm(x, 784, 64, name="fc1"))], ratio=0.2)
    x = g.relu(g.gemm(x, 64, 32, name="fc2"))
    x = g.gemm(x, 32, 10, name="fc3", gain=1.0)
    x = g.op("LogSoftmax", [x], name="logprob")
    return _center_head(g.model(7, [1, 1, 28, 28], x, [1, 10]), "fc3", seed)


def squeezenet_head_op9(seed=0):
    """SqueezeNet 1.0 from the first model zoo (opset 9, batch 1): Fire modules, and the head
    conv10 -> Relu -> GlobalAveragePool -> Softmax on the 4-D [1, C, 1, 1] tensor (an opset
    upgrade wraps that Softmax in Flatten ... Reshape)."""
    g = _G(seed)
    x = g.op("MaxPool", [g.relu(g.conv("x", 3, 16, 3, stride=2, name="conv1"))], kernel_shape=[3, 3], strides=[2, 2])
    for i, (cin, sq, ex) in enumerate(((16, 4, 8), (16, 4, 8))):
        s_ = g.relu(g.conv(x, cin, sq, 1, name=f"fire{i}_squeeze"))
        e1 = g.relu(g.conv(s_, sq, ex, 1, name=f"fire{i}_expand1x1"))
        e3 = g.relu(g.conv(s_, sq, ex, 3, name=f"fire{i}_expand3x3"))
        x = g.op("Concat", [e1, e3], axis=1)
    x = g.relu(g.conv(x, 16, 10, 1, name="conv10"))
    x = g.op("GlobalAveragePool", [x], name="pool10")
    x = g.op("Softmax", [x], name="prob")
    return g.model(9, [1, 3, 32, 32], x, [1, 10, 1, 1])


def shufflenet_caffe2_op9(seed=0):
    """ShuffleNet (v1) from a Caffe2 export (opset 9, batch 1): grouped 1x1 convs, the channel
    shuffle as Reshape to a hard-coded 5-D [1, g, C/g, H, W], Transpose, Reshape back to
    [1, C, H, W]; depthwise 3x3, residual Add, AveragePool head."""
    g = _G(seed)
    x = g.relu(g.conv("x", 3, 16, 3, stride=2, name="conv1"))
    for i in range(2):
        y = g.relu(g.conv(x, 16, 16, 1, group=4, name=f"unit{i}_gconv1"))
        y = g.op("Reshape", [y, _i64(g, f"unit{i}_shape5", [1, 4, 4, 8, 8])], name=f"unit{i}_shuffle_view")
        y = g.op("Transpose", [y], name=f"unit{i}_shuffle", perm=[0, 2, 1, 3, 4])
        y = g.op("Reshape", [y, _i64(g, f"unit{i}_shape4", [1, 16, 8, 8])], name=f"unit{i}_shuffle_back")
        y = g.conv(y, 16, 16, 3, group=16, name=f"unit{i}_dwconv")
        y = g.conv(y, 16, 16, 1, group=4, name=f"unit{i}_gconv2")
        x = g.relu(g.op("Add", [x, y], name=f"unit{i}_add"))
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Reshape", [x, _i64(g, "flat", [1, 16])], name="flatten_batch1")
    x = g.gemm(x, 16, 10, name="fc", gain=1.0)
    x = g.op("Softmax", [x], name="prob")
    return _center_head(g.model(9, [1, 3, 16, 16], x, [1, 10]), "fc", seed)


_HELPER = [  # (builder, opset, inexact ops, batch1, note)
    (caffenet_lrn_op7, 7, ("LRN",), True,
     "CaffeNet from Caffe2 (opset 7, weights among the inputs): LRN after ReLU (refused, converts with "
     "allow_inexact), grouped conv, Reshape [1, -1] hard-coding batch 1, Gemm(transB) with Dropout, Softmax"),
    (resnet_sum_op8, 8, (), False,
     "model-zoo ResNet-v1 (opset 8): unfused BatchNormalization(spatial=1), residual Sum, MaxPool with pads, "
     "GlobalAveragePool -> Flatten -> Gemm(transB)"),
    (constant_weights_op9, 9, (), True,
     "weights from Constant nodes, a bias from ConstantOfShape, BN as Mul/Add, Dropout, AveragePool, "
     "Reshape [1, 1, -1] then Flatten(axis=2), Gemm(transB=0, alpha=0.5, beta=2), Softmax(axis=1)"),
    (mobilenetv1_clip_op8, 8, (), True,
     "MobileNet-v1 (opset 8): depthwise separable convs, unfused BN, ReLU6 as Clip(min=0, max=6) "
     "attributes, AveragePool head, Flatten(axis=0) on a batch-1 model"),
    (fcn_upsample_op9, 9, (), False,
     "FPN-like (opset 9): Upsample(nearest), a 3-input Sum with skip convs, Concat, Pad(attributes), "
     "AveragePool(count_include_pad=1), MatMul+Add head"),
    (inception_lrn_op9, 9, ("LRN",), False,
     "model-zoo GoogLeNet style (opset 9): LRN in the stem (refused, converts with allow_inexact), "
     "Inception branches with MaxPool, Concat, Dropout, Reshape [-1, C], Softmax"),
    (mlp_batch1_op7, 7, (), True,
     "early-exporter MLP (opset 7): Reshape [1, 784] hard-coding batch 1, Gemm(transB), Dropout, LogSoftmax"),
    (squeezenet_head_op9, 9, (), True,
     "model-zoo SqueezeNet (opset 9, batch 1): Fire modules, conv10 -> Relu -> GlobalAveragePool -> Softmax "
     "on the 4-D tensor (Flatten ... Reshape after the opset upgrade): a head, moved after the mean"),
    (shufflenet_caffe2_op9, 9, (), True,
     "Caffe2 ShuffleNet (opset 9, batch 1): channel shuffle through hard-coded 5-D Reshapes and Transpose, "
     "grouped and depthwise convs, residual Add"),
]


# ====================================================================== the registry of models
def _torch_builder(arch, opset):
    home, opts, _ = _TORCH_HOME[arch]
    return lambda: _export_torch(arch, opset, seed=sum(map(ord, arch)), **opts)


def _entries():
    models, matrix = [], []
    for arch, (home, opts, note) in _TORCH_HOME.items():
        for op in TORCH_OPSETS:
            e = CorpusModel(f"{arch}_op{op}", "torch", op, note, _torch_builder(arch, op),
                            _TORCH_INEXACT.get(arch, ()))
            (models if op == home else matrix).append(e)
    for fn, op, inexact, batch1, note in _HELPER:
        models.append(CorpusModel(fn.__name__, "helper", op, note, functools.partial(fn, 0), tuple(inexact), batch1))
    return models, matrix


MODELS, MATRIX = _entries()
ALL = MODELS + MATRIX
_BY_NAME = {m.name: m for m in ALL}


def by_name(name: str) -> CorpusModel:
    return _BY_NAME[name]


@functools.lru_cache(maxsize=None)
def _cached(name: str) -> onnx.ModelProto:
    return _BY_NAME[name].builder()


# ====================================================================== random DAGs
def random_dag(rng: np.random.Generator, *, max_nodes: int = 7, size: int | None = None) -> onnx.ModelProto:
    """A random small classifier DAG: a Conv stem, then ``max_nodes`` random steps each reading
    one or two earlier feature maps (Conv(+Relu), Add(+Relu), Concat, AveragePool, MaxPool,
    Relu), then GlobalAveragePool -> Flatten -> Gemm -> Relu -> Gemm. Input [N, C, S, S] with
    random C, S; every shape is static; weights seeded by ``rng``."""
    c0 = int(rng.integers(1, 4))
    s = int(size or rng.choice([6, 8, 10, 12]))
    g = _G(int(rng.integers(1 << 30)), weights_as_inputs=False)
    c1 = int(rng.integers(2, 7))
    feats = [(g.relu(g.conv("x", c0, c1, 3)), c1, s)]  # (tensor, channels, size)
    for _ in range(int(rng.integers(1, max_nodes + 1))):
        t, c, hw = feats[int(rng.integers(len(feats)))]
        kind = rng.choice(["conv", "conv", "add", "concat", "avgpool", "maxpool", "convlin"])
        if kind in ("conv", "convlin"):
            k = int(rng.choice([1, 3]))
            cout = int(rng.integers(2, 9))
            stride = int(rng.choice([1, 1, 2])) if hw >= 4 else 1
            y = g.conv(t, c, cout, k, stride)
            hw = (hw + 2 * (k // 2) - k) // stride + 1
            feats.append((g.relu(y) if kind == "conv" else y, cout, hw))
        elif kind in ("add", "concat"):
            same = [f for f in feats if f[2] == hw and f[0] != t]
            if not same:
                continue
            t2, c2, _ = same[int(rng.integers(len(same)))]
            if kind == "add":
                if c2 != c:
                    t2 = g.conv(t2, c2, c, 1, pad=0)
                feats.append((g.relu(g.op("Add", [t, t2])), c, hw))
            else:
                feats.append((g.op("Concat", [t, t2], axis=1), c + c2, hw))
        elif hw >= 2:
            k = 2
            op = "AveragePool" if kind == "avgpool" else "MaxPool"
            feats.append((g.op(op, [t], kernel_shape=[k, k], strides=[k, k]), c, hw // k))
    t, c, _ = feats[-1]
    x = g.op("Flatten", [g.op("GlobalAveragePool", [t])], axis=1)
    hidden = int(rng.integers(4, 17))
    x = g.relu(g.gemm(x, c, hidden))
    classes = int(rng.integers(2, 6))
    x = g.gemm(x, hidden, classes, name="head", gain=1.0)
    m = g.model(17, ["N", c0, s, s], x, ["N", classes])
    return _center_head(m, "head", int(rng.integers(1 << 30)))


# ====================================================================== what converts (README table)
#: Op families for the README's "What converts, and what does not" table: (family, op types,
#: claim, context). The claim is what the registry (``onnx2burst.rewrite.registry``) does with
#: these ops in the spiking part of a graph (after the first neuron; before it every op runs
#: once on the analog input, exactly as in the ANN); ``tests/test_corpus.py`` checks each
#: claim against the registry. Context: how the op is used ("default"; "two spiking": both
#: operands carry spikes; "tail": only feeds the graph outputs; "between": feeds a later layer).
CLAIMS = {
    "neuron": "becomes a BurstIF neuron",
    "exact": "exact (runs unchanged on the time-folded batch)",
    "per timestep": "lateral inhibition: the input with the most spikes so far wins (converges as T grows)",
    "after the mean": "exact: moved after the mean over T",
    "refused": "refused, named by node (converts per timestep with --allow-inexact)",
}
FAMILIES = [
    ("ReLU neurons", ("Relu", "Clip"), "neuron", "default",
     "Clip only with a constant min 0 (ReLU6: max kept by the threshold cap)"),
    ("Signed neurons", ("LeakyRelu", "PRelu"), "neuron", "default",
     "negative spikes at threshold theta/slope (§2); PRelu: one constant slope >= 0 or one per channel; "
     "--no-signed converts them as ReLU neurons (inexact)"),
    ("Convolution and dense layers", ("Conv", "ConvTranspose", "Gemm"), "exact", "default",
     "MatMul+Add with a constant weight becomes Gemm"),
    ("Products with a constant", ("Mul", "Div", "MatMul", "Einsum"), "exact", "default",
     "one operand constant (or computed before the first neuron)"),
    ("Sums and differences", ("Add", "Sub", "Sum", "Neg"), "exact", "default", "residual Add/Sum included"),
    ("BatchNorm (inference statistics)", ("BatchNormalization",), "exact", "default",
     "folded into the Conv/Gemm before it (also as Mul/Add); elsewhere a per-channel affine map"),
    ("Average pooling and means", ("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum"), "exact",
     "default", ""),
    ("Layout and indexing", ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
                             "Gather", "Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Cast"), "exact",
     "default", "a Reshape/Flatten that hard-codes batch 1 is rewritten"),
    ("Resampling", ("Resize", "Upsample"), "exact", "default", "opset < 13 Upsample is upgraded to Resize"),
    ("Constants and no-ops", ("Constant", "Identity", "Dropout"), "exact", "default",
     "Constant/ConstantOfShape weights folded; Identity/Dropout dropped"),
    ("Shape computations", ("Shape", "Size", "ConstantOfShape", "Range", "Equal", "Less", "Greater", "Where",
                            "NonZero"), "exact", "default", "a shape taken before the time expansion is refused"),
    ("Max pooling", ("MaxPool", "GlobalMaxPool"), "per timestep", "default",
     "default --maxpool lateral; --maxpool spikes: MaxPool per timestep on spike maps (max of spikes is not the "
     "max of rates; exports to NIR with --lossy); --maxpool avg swaps in AveragePool (changes the ANN)"),
    ("Classifier heads at the output", ("Softmax", "LogSoftmax", "ArgMax"), "after the mean", "tail", ""),
    ("Ops after the last neuron", ("Sigmoid", "Tanh", "Exp", "Log", "Softplus", "(not in the registry)"),
     "after the mean", "after last neuron",
     "e.g. a detector's box decoding: runs once, analog, on the mean over T of the spiking tensors it reads"),
    ("Heads between layers", ("Softmax", "LogSoftmax", "ArgMax"), "refused", "between", ""),
    ("Products of two spiking tensors", ("Mul", "Div", "MatMul", "Einsum"), "refused", "two spiking",
     "e.g. squeeze-excitation gates"),
    ("Non-ReLU activations", ("Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Gelu", "HardSigmoid",
                              "HardSwish", "Softplus", "Softsign", "Mish", "Erf", "ThresholdedRelu", "Shrink"),
     "refused", "default", ""),
    ("Normalisation by data statistics", ("LRN", "LayerNormalization", "InstanceNormalization",
                                          "GroupNormalization", "LpNormalization"), "refused", "default", ""),
    ("Max/min and other non-linear maps", ("Max", "Min", "ReduceMax", "ReduceMin", "ReduceL2", "ArgMin", "Abs",
                                           "Exp", "Log", "Sqrt", "Pow", "Reciprocal", "Floor", "Ceil", "Round",
                                           "Sign", "Sin", "Cos"), "refused", "default", ""),
    ("Anything else", ("(not in the registry)", "(custom domain)"), "refused", "default", ""),
]


def family_models(op_types_by_model: dict[str, set[str]]) -> dict[str, list[str]]:
    """Family name -> corpus models whose source graph has one of its op types (in the family's
    context where that matters: two-spiking products only for models refused for them)."""
    out = {}
    for fam, ops, claim, ctx, _ in FAMILIES:
        names = []
        for name, types in op_types_by_model.items():
            spec = _BY_NAME.get(name)
            hit = set(ops) & types
            refused_here = set(spec.inexact if spec else ())
            if ctx == "two spiking" or (claim == "refused" and ctx == "default" and fam != "Anything else"):
                hit = hit & refused_here
            elif claim != "refused":
                hit = hit - refused_here
            if ctx == "between":
                hit = set()
            if hit:
                names.append(name)
        out[fam] = names
    return out


# ====================================================================== command line
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.corpus", description="Write the corpus models as .onnx files.")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--matrix", action="store_true", help="also the torch architectures at their other opsets")
    p.add_argument("--only", nargs="*", default=None, help="names to write (default: all)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    chosen = ALL if a.matrix else MODELS
    if a.only:
        chosen = [m for m in ALL if m.name in set(a.only)]
    index = []
    for spec in chosen:
        m = spec.build()
        path = a.out / f"{spec.name}.onnx"
        path.write_bytes(m.SerializeToString())
        index.append({"name": spec.name, "family": spec.family, "opset": spec.opset, "nodes": len(m.graph.node),
                      "inexact": list(spec.inexact), "batch1": spec.batch1, "note": spec.note})
        print(f"{path}  ({len(m.graph.node)} nodes)")
    (a.out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
