"""The U-Net of Ronneberger et al. (2015), configurable, touching no files.

Tensors are (B, C, H, W): batch, channels, y, x in pixels. The output has
``n_classes`` channels of logits: one membrane logit (apply a sigmoid) when
``n_classes == 1``, class logits for a softmax over channels otherwise.

::

    depth = 4 (three poolings, bottleneck at the 4th level)

    in ─ DoubleConv(c) ────────────────────────────── skip ──────────────────▶ Up ─ Out ─▶ logits
            └ Down(2c) ────────────────────── skip ───────────────▶ Up ─┘
                 └ Down(4c) ─────── skip ──────────────▶ Up ─┘
                      └ Down(8c) (bottleneck) ─────────────┘

With ``padding="same"`` the output has the input's size, which must be divisible by
``2 ** (depth - 1)``. With ``padding="valid"`` (the paper's version) every 3x3 convolution
loses a pixel on each side, skips are centre-cropped, and the output is smaller than the
input (see :meth:`UNetConfig.valid_output_size`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from torch import nn

Norm = Literal["batch", "group", "none"]
Padding = Literal["same", "valid"]
Init = Literal["pytorch", "he"]
# Fields added after the first checkpoints, with the value every earlier config had.
_LATER_DEFAULTS: dict[str, Any] = {"dropout_levels": 1, "init": "pytorch"}


class UNetConfig(BaseModel):
    """Architecture of the U-Net; stored in every checkpoint so a model loads with nothing else."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_channels: int = Field(default=1, ge=1, description="Input channels (1 for grey-level EM).")
    n_classes: int = Field(default=1, ge=1, description="Output channels: 1 = membrane logit (sigmoid), "
                                                "N > 1 = class logits (softmax).")
    depth: int = Field(default=5, ge=1, le=8, description="Resolution levels including the bottleneck "
                                                  "(5 = four poolings, as in the paper).")
    base_channels: int = Field(default=64, ge=1, description="Feature channels at the first level; doubled "
                                                     "at each level down.")
    padding: Padding = Field(default="same", description="'same' keeps the size; 'valid' is the paper's "
                                                 "unpadded version (output smaller than input).")
    norm: Norm = Field(default="batch", description="Normalisation after each convolution.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout probability at the deepest "
                                                            "levels (the paper uses 0.5 at the two deepest).")
    dropout_levels: int = Field(default=1, ge=1, le=7, description="How many of the deepest levels apply "
                                "dropout: 1 = the bottleneck only, 2 = as the paper.")
    init: Init = Field(default="pytorch", description="Initial weights: 'pytorch' (its defaults) or 'he' "
                       "(normal, std sqrt(2 / incoming connections), as the paper).")

    @model_validator(mode="after")
    def _check_dropout_levels(self) -> UNetConfig:
        if self.dropout_levels > max(1, self.depth - 1):
            raise ValueError(f"dropout_levels {self.dropout_levels} exceeds the {self.depth - 1} levels "
                             f"below the first of a depth-{self.depth} U-Net")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_additions(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Fields added after checkpoints and pipeline records existed are left out of dumps while at
        their defaults, so a config's record (compared by the pipeline to decide what to re-run) and
        its checkpoints stay as they were."""
        data: dict[str, Any] = handler(self)
        for name, default in _LATER_DEFAULTS.items():
            if data.get(name) == default:
                data.pop(name)
        return data

    @classmethod
    def paper(cls, **overrides: Any) -> UNetConfig:
        """Ronneberger et al. 2015: depth 5, 64 channels, valid padding, no normalisation, dropout 0.5 at
        the two deepest levels, He initialisation; ``overrides`` change any of it."""
        return cls(**{"depth": 5, "base_channels": 64, "padding": "valid", "norm": "none", "dropout": 0.5,
                      "dropout_levels": 2, "init": "he", **overrides})

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this (same padding)."""
        return 2 ** (self.depth - 1)

    def valid_output_size(self, size: int) -> int:
        """Output size along one axis for ``padding="valid"``; ValueError if ``size`` does not fit."""
        s = size
        for level in range(self.depth - 1):
            s -= 4
            if s <= 0 or s % 2:
                raise ValueError(f"input size {size} does not fit a valid-padding U-Net of depth "
                                 f"{self.depth}: size {s} before pooling {level + 1} must be even "
                                 "and positive")
            s //= 2
        s -= 4
        for _ in range(self.depth - 1):
            s = 2 * s - 4
        if s <= 0:
            raise ValueError(f"input size {size} is too small for a valid-padding U-Net of depth "
                             f"{self.depth}")
        return s


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # 8 groups (or fewer for tiny test models) is the usual choice for small batches.
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class DoubleConv(nn.Module):
    """(3x3 conv → norm → ReLU) x 2."""

    def __init__(self, c_in: int, c_out: int, padding: Padding, norm: Norm) -> None:
        super().__init__()
        pad = 1 if padding == "same" else 0
        bias = norm == "none"  # a bias before a normalisation is redundant
        self.block = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=pad, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=pad, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2x2 max-pool, then a DoubleConv."""

    def __init__(self, c_in: int, c_out: int, padding: Padding, norm: Norm, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(c_in, c_out, padding, norm)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(self.pool(x)))


def _center_crop(skip: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    dy = (skip.shape[-2] - like.shape[-2]) // 2
    dx = (skip.shape[-1] - like.shape[-1]) // 2
    return skip[..., dy : dy + like.shape[-2], dx : dx + like.shape[-1]]


class Up(nn.Module):
    """2x2 transposed conv (halving channels), concatenate the (cropped) skip, DoubleConv."""

    def __init__(self, c_in: int, c_out: int, padding: Padding, norm: Norm) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(c_in // 2 + c_out, c_out, padding, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([_center_crop(skip, x), x], dim=1))


class UNet(nn.Module):
    """U-Net: an encoder of ``depth - 1`` Down blocks, a decoder of as many Up blocks, 1x1 output."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        widths = [cfg.base_channels * 2**i for i in range(cfg.depth)]
        self.inc = DoubleConv(cfg.in_channels, widths[0], cfg.padding, cfg.norm)
        self.downs = nn.ModuleList(  # Down i ends level i + 1; the bottleneck is level depth - 1
            Down(widths[i], widths[i + 1], cfg.padding, cfg.norm,
                 dropout=cfg.dropout if i + 1 >= cfg.depth - cfg.dropout_levels else 0.0)
            for i in range(cfg.depth - 1)
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], cfg.padding, cfg.norm) for i in reversed(range(cfg.depth - 1))
        )
        self.outc = nn.Conv2d(widths[0], cfg.n_classes, kernel_size=1)
        if cfg.init == "he":
            he_initialise(self)

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError naming the problem when ``x`` is not (B, in_channels, H, W) of a usable size."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"input must be (B, {cfg.in_channels}, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if cfg.padding == "same":
            if h % cfg.divisor or w % cfg.divisor:
                raise ValueError(f"input height and width must be multiples of {cfg.divisor} for a "
                                 f"depth-{cfg.depth} U-Net with same padding, got {h}x{w}")
        else:
            cfg.valid_output_size(h)
            cfg.valid_output_size(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()  # the bottleneck
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def he_initialise(model: nn.Module) -> None:
    """The paper's initialisation: every weight from a normal distribution with standard deviation
    sqrt(2 / N), N the connections into one unit (3 x 3 x channels in for a convolution, channels in
    for the non-overlapping 2 x 2 up-convolution), biases zero."""
    for m in model.modules():
        if isinstance(m, nn.ConvTranspose2d):
            # Not kaiming_normal_: torch takes a transposed weight's fan-in as out channels x 2 x 2,
            # but with stride 2 each output pixel sees one tap per input channel.
            nn.init.normal_(m.weight, 0.0, (2.0 / m.in_channels) ** 0.5)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Membrane probability (B, H, W) from one logit, class probabilities (B, N, H, W) otherwise."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return F.softmax(logits, dim=1)


def receptive_field_radius(cfg: UNetConfig) -> int:
    """Pixels on each side of an output pixel that can change it (same padding, 3x3 convolutions,
    2x2 pooling and up-convolutions): 7 * 2**(depth-1) - 5, e.g. 107 for depth 5. The worst case
    over the pixel's phase in the pooling grid; checked against gradients in the tests.

    Blockwise inference must give every written pixel at least this much real context, or the
    tile borders change the prediction (:func:`unet.blending.min_context`).
    """
    return 7 * 2 ** (cfg.depth - 1) - 5
