"""File-based model registry.

A model is a directory ``<root>/<name>/`` holding ``manifest.json`` and its weights. Roots are
searched in order, later roots overriding earlier ones: the package's own
``qmri/segmentation/models/`` (the shipped models) first, then any directories the caller adds
(the repository passes the admin's models directory, config ``MYOVAULT_SEGMENTATION_MODELS_DIR``).
Each root may hold ``registry.json`` with ``{"version": 1, "defaults": {"<anatomy>": "<name>"}}``;
the last root that names a default for an anatomy wins, so an admin chooses the default per
anatomy without touching the package.

Manifest (closed vocabulary; anything unknown is an error)::

    {"name": str, "version": str, "anatomy": str,
     "format": "state_dict" | "torchscript" | "onnx",
     "weights": file name inside the model directory,
     "architecture": "unet2d" (state_dict only), "architecture_config": {...} (state_dict only),
     "input": {"pixel_mm": float, "size_multiple": int, ...},
     "network_labels": {"<class index>": "background" | muscle name, ...}}

``network_labels`` maps each output channel to a muscle of
:data:`qmri.phantom.labelmaps.MUSCLE_NAMES`, so a model trained with another label order is
usable as long as it names its classes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from qmri.phantom.labelmaps import MUSCLE_NAMES
from qmri.segmentation.errors import ModelFormatError, ModelRegistryError, UnknownModelError
from qmri.segmentation.model import UNetConfig, build_model

__all__ = [
    "FORMATS",
    "ModelInfo",
    "SegmentationModel",
    "ModelRegistry",
    "package_models_dir",
    "load_model",
    "validate_manifest",
]

FORMATS: tuple[str, ...] = ("state_dict", "torchscript", "onnx")
_REQUIRED = ("name", "version", "anatomy", "format", "weights", "input", "network_labels")
_OPTIONAL = ("architecture", "architecture_config", "training", "description", "metrics")


@dataclass(frozen=True)
class ModelInfo:
    """A validated manifest and where it lives."""

    name: str
    version: str
    anatomy: str
    format: str
    directory: Path
    weights_path: Path
    pixel_mm: float
    size_multiple: int
    class_to_muscle: tuple[int, ...]  #: network class index -> muscle index (0 = background)
    manifest: dict[str, Any]

    def weights_sha256(self) -> str:
        """SHA-256 of the weight file (recorded with every derived result)."""
        digest = hashlib.sha256()
        with self.weights_path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


class _Predictor(Protocol):
    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]: ...


class SegmentationModel:
    """A loaded model: ``predict_logits((n, 1, X, Y)) -> (n, n_classes, X, Y)``."""

    def __init__(self, info: ModelInfo, predictor: _Predictor) -> None:
        self.info = info
        self._predict = predictor

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version

    def predict_logits(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Class scores for a batch of normalised slices (X, Y multiples of size_multiple)."""
        return self._predict(np.ascontiguousarray(batch, dtype=np.float32))


def validate_manifest(manifest: dict[str, Any], directory: Path) -> ModelInfo:
    """Check a manifest against the closed vocabulary and return its :class:`ModelInfo`."""
    where = directory / "manifest.json"
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ModelRegistryError(f"{where}: missing keys {missing}")
    unknown = set(manifest) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise ModelRegistryError(f"{where}: unknown keys {sorted(unknown)}")
    fmt = manifest["format"]
    if fmt not in FORMATS:
        raise ModelFormatError(f"{where}: format {fmt!r} not one of {FORMATS}")
    if fmt == "state_dict" and manifest.get("architecture") != "unet2d":
        raise ModelFormatError(f"{where}: state_dict models must have architecture 'unet2d'")
    if directory.name != manifest["name"]:
        raise ModelRegistryError(f"{where}: name {manifest['name']!r} != directory name")
    weights = directory / str(manifest["weights"])
    if weights.parent != directory or not weights.is_file():
        raise ModelRegistryError(f"{where}: weights file {manifest['weights']!r} not found")
    vocabulary = {"background": 0} | {n: i + 1 for i, n in enumerate(MUSCLE_NAMES)}
    labels = manifest["network_labels"]
    try:
        indices = sorted(int(k) for k in labels)
    except ValueError as exc:
        raise ModelRegistryError(f"{where}: network_labels keys must be integers") from exc
    if indices != list(range(len(indices))):
        raise ModelRegistryError(f"{where}: network_labels must cover 0..n-1")
    mapping = []
    for i in indices:
        muscle = labels[str(i)]
        if muscle not in vocabulary:
            raise ModelRegistryError(f"{where}: unknown label name {muscle!r}")
        mapping.append(vocabulary[muscle])
    pixel = manifest["input"].get("pixel_mm")
    if not isinstance(pixel, int | float) or pixel <= 0:
        raise ModelRegistryError(f"{where}: input.pixel_mm must be a positive number")
    return ModelInfo(
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        anatomy=str(manifest["anatomy"]),
        format=str(fmt),
        directory=directory,
        weights_path=weights,
        pixel_mm=float(pixel),
        size_multiple=int(manifest["input"].get("size_multiple", 16)),
        class_to_muscle=tuple(mapping),
        manifest=manifest,
    )


def _torch_predictor(module: torch.nn.Module) -> _Predictor:
    module.eval()

    def predict(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        with torch.inference_mode():
            return np.asarray(module(torch.from_numpy(batch)).float().numpy())

    return predict


def _load(info: ModelInfo) -> SegmentationModel:
    if info.format == "state_dict":
        config = UNetConfig.from_dict(info.manifest.get("architecture_config", {}))
        net = build_model(config)
        state = torch.load(info.weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return SegmentationModel(info, _torch_predictor(net))
    if info.format == "torchscript":
        with warnings.catch_warnings():
            # TorchScript is the exchange format the issue names; torch 2.13 deprecates
            # torch.jit.load in favour of torch.export but still loads archives correctly.
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning
            )
            scripted = torch.jit.load(str(info.weights_path), map_location="cpu")
        return SegmentationModel(info, _torch_predictor(scripted))
    try:
        import onnxruntime  # noqa: PLC0415 - optional dependency, imported on demand
    except ImportError as exc:
        raise ModelFormatError(
            f"{info.name}: ONNX models need the optional package onnxruntime"
        ) from exc
    session = onnxruntime.InferenceSession(
        str(info.weights_path), providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name

    def predict(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray(session.run(None, {input_name: batch})[0], dtype=np.float32)

    return SegmentationModel(info, predict)


def package_models_dir() -> Path:
    """The shipped models directory (``qmri/segmentation/models``)."""
    return Path(str(resources.files("qmri.segmentation").joinpath("models")))


class ModelRegistry:
    """Models found in ``roots`` (later roots override earlier ones)."""

    def __init__(self, extra_roots: Sequence[Path] = ()) -> None:
        self.roots: list[Path] = [package_models_dir(), *(Path(r) for r in extra_roots)]

    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelRegistryError(f"cannot read {path}: {exc}") from exc
        return data

    def models(self) -> dict[str, ModelInfo]:
        """All valid models by name (an invalid manifest is an error, not skipped)."""
        found: dict[str, ModelInfo] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for manifest in sorted(root.glob("*/manifest.json")):
                info = validate_manifest(self._read_json(manifest), manifest.parent)
                found[info.name] = info
        return found

    def defaults(self) -> dict[str, str]:
        """``{anatomy: model name}`` merged over the roots."""
        merged: dict[str, str] = {}
        for root in self.roots:
            path = root / "registry.json"
            if not path.is_file():
                continue
            data = self._read_json(path)
            if data.get("version") != 1 or set(data) - {"version", "defaults"}:
                raise ModelRegistryError(f"{path}: expected {{'version': 1, 'defaults': {{}}}}")
            merged.update({str(k): str(v) for k, v in data.get("defaults", {}).items()})
        return merged

    def info(self, name: str | None = None, *, anatomy: str = "thigh") -> ModelInfo:
        """Manifest of ``name``, or of the default model for ``anatomy``."""
        models = self.models()
        if name is None:
            defaults = self.defaults()
            if anatomy not in defaults:
                raise UnknownModelError(f"no default segmentation model for anatomy {anatomy!r}")
            name = defaults[anatomy]
        if name not in models:
            raise UnknownModelError(f"unknown segmentation model {name!r}; have {sorted(models)}")
        return models[name]

    def load(self, name: str | None = None, *, anatomy: str = "thigh") -> SegmentationModel:
        """Load a model (default for ``anatomy`` when ``name`` is None)."""
        return _load(self.info(name, anatomy=anatomy))

    def set_default(self, anatomy: str, name: str, root: Path) -> None:
        """Make ``name`` the default for ``anatomy`` in ``root``'s ``registry.json``."""
        if Path(root) not in self.roots:
            raise ModelRegistryError(f"{root} is not one of this registry's roots")
        info = self.info(name)
        if info.anatomy != anatomy:
            raise ModelRegistryError(f"model {name!r} is for {info.anatomy!r}, not {anatomy!r}")
        path = Path(root) / "registry.json"
        data: dict[str, Any] = (
            self._read_json(path) if path.is_file() else {"version": 1, "defaults": {}}
        )
        defaults: dict[str, str] = dict(data.get("defaults", {}))
        defaults[anatomy] = name
        data["defaults"] = defaults
        path.write_text(json.dumps(data, indent=2) + "\n", "utf-8")


def load_model(
    name: str | None = None, *, anatomy: str = "thigh", extra_roots: Sequence[Path] = ()
) -> SegmentationModel:
    """Load a segmentation model by name, or the default for ``anatomy``."""
    return ModelRegistry(extra_roots).load(name, anatomy=anatomy)
