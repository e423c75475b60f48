"""A compact 2D U-Net applied slice by slice to axial thigh images.

Architecture (Ronneberger et al. 2015, slimmed for CPU): ``depth`` down-sampling stages of two
3x3 convolutions + batch norm + ReLU, max-pool by 2; symmetric decoder with transposed-convolution
up-sampling and skip concatenation; 1x1 output convolution to ``n_classes`` logits. With
``base_channels=16`` and ``depth=4`` it has about 1.9 M parameters (7.5 MB as float32).
Input height and width must be multiples of ``2**depth``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["UNetConfig", "UNet2D", "build_model"]


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters that define the network (stored in the model manifest)."""

    in_channels: int = 1
    n_classes: int = 12
    base_channels: int = 16
    depth: int = 4

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        allowed = set(cls.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown U-Net config keys {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in data.items()})


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet2D(nn.Module):
    """2D U-Net: ``(N, in_channels, H, W)`` -> logits ``(N, n_classes, H, W)``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList()
        c_prev = config.in_channels
        for w in widths[:-1]:
            self.down.append(_block(c_prev, w))
            c_prev = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = _block(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_skip, w_in in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.up.append(nn.ConvTranspose2d(w_in, w_skip, 2, stride=2))
            self.dec.append(_block(2 * w_skip, w_skip))
        self.head = nn.Conv2d(widths[0], config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = up(x)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)


def build_model(config: UNetConfig | None = None) -> UNet2D:
    """A freshly initialised network (seed torch before calling for reproducible weights)."""
    return UNet2D(config or UNetConfig())
