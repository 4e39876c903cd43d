"""MiniFASNet: the two small presentation-attack-detection networks whose weights ship in ``weights/``.

A MobileFaceNet-style trunk on an 80x80 BGR input (0-255 floats, no normalisation): a strided
stem, then four stages of inverted-bottleneck blocks (1x1 expand, 3x3 depthwise, 1x1 linear
projection; residual inside a stage, stride 2 at each stage's entry), a 1x1 widening to 512
channels, a 5x5 depthwise "global" convolution, a 128-d embedding and a 3-way classifier
(index 1 = live face, 0 and 2 = attack classes).

Written for this project from the layer shapes of the published state dicts (Silent-Face-Anti-
Spoofing by Minivision, Apache-2.0; see ``weights/NOTICE``). Module names follow the state dicts'
keys so that they load with ``strict=True``. The two variants differ only in their expansion
widths and in a squeeze-excitation unit on the last block of each residual stage (V1SE).

torch is imported at module level: import this module only where torch is wanted (the scorer
imports it lazily).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

INPUT_SIZE = 80
NUM_CLASSES = 3
LIVE_CLASS = 1
EMBEDDING_SIZE = 128
HEAD_CHANNELS = 512
SE_REDUCTION = 4


@dataclass(frozen=True)
class MiniFASNetWidths:
    """Channel widths of one MiniFASNet variant.

    ``stem``: channels of the first two convolutions. Each of ``entries`` is the expansion width
    of a stage's strided entry block (conv_23, conv_34, conv_45); each of ``stages`` lists the
    expansion widths of the residual blocks that follow it (conv_3, conv_4, conv_5);
    ``stage_channels`` the channels between blocks in each stage.
    """

    stem: int
    entries: tuple[int, int, int]
    stage_channels: tuple[int, int, int]
    stages: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    squeeze_excitation: bool


MINIFASNET_V2 = MiniFASNetWidths(
    stem=32,
    entries=(103, 231, 308),
    stage_channels=(64, 128, 128),
    stages=((13, 13, 13, 13), (231, 52, 26, 77, 26, 26), (26, 26)),
    squeeze_excitation=False,
)

MINIFASNET_V1SE = MiniFASNetWidths(
    stem=32,
    entries=(103, 231, 308),
    stage_channels=(64, 128, 128),
    stages=((13, 26, 13, 52), (154, 52, 26, 52, 26, 26), (26, 26)),
    squeeze_excitation=True,
)


class ConvNormAct(nn.Sequential):
    """Convolution without bias, batch norm, then PReLU unless ``activation`` is false."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        depthwise: bool = False,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            groups=in_channels if depthwise else 1,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        if activation:
            self.prelu = nn.PReLU(out_channels)


class SqueezeExcitation(nn.Module):
    """Channel gating: global mean, 1x1 reduce + BN + ReLU, 1x1 expand + BN, sigmoid, multiply."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.relu(self.bn1(self.fc1(gate)))
        gate = torch.sigmoid(self.bn2(self.fc2(gate)))
        return x * gate


class Bottleneck(nn.Module):
    """1x1 expansion, 3x3 depthwise (stride 1 or 2), 1x1 linear projection.

    With ``residual`` the input is added to the output (the optional squeeze-excitation acts on the
    projected branch before the addition).
    """

    def __init__(
        self,
        in_channels: int,
        expanded: int,
        out_channels: int,
        *,
        stride: int,
        residual: bool,
        squeeze_excitation: bool = False,
    ) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual block keeps its resolution and channel count")
        self.residual = residual
        self.conv = ConvNormAct(in_channels, expanded)
        self.conv_dw = ConvNormAct(expanded, expanded, kernel=3, stride=stride, padding=1, depthwise=True)
        self.project = ConvNormAct(expanded, out_channels, activation=False)
        self.se_module = SqueezeExcitation(out_channels) if squeeze_excitation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            out = self.se_module(out)
        return x + out if self.residual else out


class ResidualStage(nn.Module):
    """Residual bottlenecks at constant resolution; with SE, the last block carries the gate."""

    def __init__(self, channels: int, expansions: tuple[int, ...], *, squeeze_excitation: bool) -> None:
        super().__init__()
        last = len(expansions) - 1
        self.model = nn.Sequential(
            *(
                Bottleneck(
                    channels,
                    width,
                    channels,
                    stride=1,
                    residual=True,
                    squeeze_excitation=squeeze_excitation and i == last,
                )
                for i, width in enumerate(expansions)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MiniFASNet(nn.Module):
    """One PAD network: ``(N, 3, 80, 80)`` BGR 0-255 float -> ``(N, 3)`` logits."""

    def __init__(self, widths: MiniFASNetWidths) -> None:
        super().__init__()
        stem = widths.stem
        c3, c4, c5 = widths.stage_channels
        se = widths.squeeze_excitation
        self.conv1 = ConvNormAct(3, stem, kernel=3, stride=2, padding=1)  # 80 -> 40
        self.conv2_dw = ConvNormAct(stem, stem, kernel=3, padding=1, depthwise=True)
        self.conv_23 = Bottleneck(stem, widths.entries[0], c3, stride=2, residual=False)  # 40 -> 20
        self.conv_3 = ResidualStage(c3, widths.stages[0], squeeze_excitation=se)
        self.conv_34 = Bottleneck(c3, widths.entries[1], c4, stride=2, residual=False)  # 20 -> 10
        self.conv_4 = ResidualStage(c4, widths.stages[1], squeeze_excitation=se)
        self.conv_45 = Bottleneck(c4, widths.entries[2], c5, stride=2, residual=False)  # 10 -> 5
        self.conv_5 = ResidualStage(c5, widths.stages[2], squeeze_excitation=se)
        self.conv_6_sep = ConvNormAct(c5, HEAD_CHANNELS)
        # A depthwise kernel as large as the last feature map (5x5 for an 80x80 input): one value per channel.
        final = (INPUT_SIZE + 15) // 16
        self.conv_6_dw = ConvNormAct(HEAD_CHANNELS, HEAD_CHANNELS, kernel=final, depthwise=True, activation=False)
        self.linear = nn.Linear(HEAD_CHANNELS, EMBEDDING_SIZE, bias=False)
        self.bn = nn.BatchNorm1d(EMBEDDING_SIZE)
        self.prob = nn.Linear(EMBEDDING_SIZE, NUM_CLASSES, bias=False)

    def fuse(self) -> MiniFASNet:
        """Fold every 2-D batch norm into the convolution before it (inference only; in place).

        The state dict changes shape (biases appear): load the weights first, then fuse.
        """
        if self.training:
            raise RuntimeError("fuse() folds running statistics: call eval() first")
        for module in self.modules():
            if isinstance(module, ConvNormAct) and isinstance(module.bn, nn.BatchNorm2d):
                module.conv = fuse_conv_bn_eval(module.conv, module.bn)
                module.bn = nn.Identity()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        x = self.conv_6_dw(self.conv_6_sep(x)).flatten(1)
        return self.prob(self.bn(self.linear(x)))


#: the architecture of each shipped network, by the name ``faceengine.liveness.scorer.PAD_MODELS`` uses
WIDTHS: dict[str, MiniFASNetWidths] = {"MiniFASNetV2": MINIFASNET_V2, "MiniFASNetV1SE": MINIFASNET_V1SE}


def state_dict_unwrap(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``module.`` prefix that ``nn.DataParallel`` puts on every key."""
    prefix = "module."
    return {key.removeprefix(prefix): value for key, value in state.items()}


def network_load(name: str, path: str | Path) -> MiniFASNet:
    """The network ``name`` (a key of :data:`WIDTHS`) with the state dict at ``path``, in eval mode,
    batch norms folded: the reference the ONNX export is made from and checked against.
    The caller checks the file's digest."""
    network = MiniFASNet(WIDTHS[name])
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    network.load_state_dict(state_dict_unwrap(state), strict=True)
    return network.eval().fuse()
