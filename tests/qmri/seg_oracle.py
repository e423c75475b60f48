"""An oracle TorchScript segmentation model for plumbing tests (registry, inference, CLI).

Images hold ``label / 11`` after normalisation, so the oracle reads the class off the
intensity: whatever is wrong in a test using it is in the plumbing, not in a network.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from qmri.segmentation.labels import MUSCLE_NAMES


class Oracle(torch.nn.Module):
    """Logits peaked at ``round(11 * x)`` for every pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.arange(12, dtype=x.dtype).view(1, 12, 1, 1)
        return -40.0 * (x * 11.0 - k) ** 2


def oracle_manifest(name: str, fmt: str = "torchscript", **extra: object) -> dict[str, object]:
    """A valid manifest for the oracle (2 mm pixels), with ``extra`` keys replaced."""
    manifest: dict[str, object] = {
        "name": name,
        "version": "0.0.1",
        "anatomy": "thigh",
        "format": fmt,
        "weights": "model.pt",
        "input": {"pixel_mm": 2.0, "size_multiple": 16},
        "network_labels": {"0": "background"} | {str(i + 1): m for i, m in enumerate(MUSCLE_NAMES)},
    }
    manifest.update(extra)
    return manifest


def write_oracle_model(root: Path, name: str = "oracle") -> Path:
    """Save the oracle as ``root/<name>/`` (TorchScript + manifest); return ``root``."""
    directory = root / name
    directory.mkdir(parents=True)
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript; admins may still bring TorchScript models
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"`torch\.jit")
        torch.jit.script(Oracle()).save(str(directory / "model.pt"))
    (directory / "manifest.json").write_text(json.dumps(oracle_manifest(name)), "utf-8")
    return root
