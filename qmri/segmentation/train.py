"""Seeded, deterministic CPU training of the thigh U-Net on synthetic phantoms.

Training data are made on the fly from real muscle label maps (or any label volumes) by
:func:`qmri.phantom.synth.synthesize`: in every *round* each training label map yields one new
synthetic subject (random severity, contrast, acquisition and in-plane orientation), whose
slices join a growing pool; the network then takes ``steps_per_round`` optimiser steps on random
crops drawn from the pool (with left-right flips and gamma changes). Validation subjects are made
once, with a fixed seed, and scored after every round.

Reproducibility: one integer seed drives numpy and torch; deterministic algorithms are
enforced and the thread count is fixed (default 1), so the same command on the same software
gives the same weights (checked for the shipped model: two runs, identical tensors).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - conventional alias
from numpy.typing import NDArray

from qmri.phantom.labelmaps import MUSCLE_NAMES, N_MUSCLES, load_label_map, split_files
from qmri.phantom.synth import synthesize
from qmri.segmentation.model import UNet2D, UNetConfig, build_model
from qmri.segmentation.preprocess import normalize_intensity

__all__ = [
    "TrainConfig",
    "LabelSource",
    "make_training_slices",
    "dice_per_label",
    "train_model",
    "save_model",
    "train_from_labels_dir",
    "MODEL_VERSION",
]

Log = Callable[[str], None]

#: Version written by :func:`train_from_labels_dir` unless told otherwise (the shipped weights').
MODEL_VERSION = "2.0.0"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights."""

    seed: int = 20261123
    rounds: int = 40
    steps_per_round: int = 250
    batch_size: int = 16
    crop_px: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    pixel_mm: float = 3.0
    canvas_px: tuple[int, int] = (160, 112)
    max_slices_per_volume: int = 6
    severity_weights: tuple[float, float, float] = (0.3, 0.3, 0.4)
    contrasts: tuple[str, ...] = ("water", "mese", "gre", "ff", "fat")
    contrast_weights: tuple[float, ...] = (0.3, 0.25, 0.25, 0.1, 0.1)
    max_rotation_deg: float = 15.0
    threads: int = 1
    unet: UNetConfig = field(default_factory=UNetConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the manifest)."""
        data = asdict(self)
        data["unet"] = self.unet.to_dict()
        return data


@dataclass(frozen=True)
class LabelSource:
    """One muscle label volume used to make synthetic subjects (RAS axes, labels 0..11)."""

    name: str
    labels: NDArray[np.uint8]
    spacing_mm: tuple[float, float, float]


_SEVERITIES = ("healthy", "moderate", "severe")


def make_training_slices(
    source: LabelSource,
    rng: np.random.Generator,
    config: TrainConfig,
    *,
    severity: str | None = None,
    contrast: str | None = None,
    augment_geometry: bool = True,
) -> tuple[NDArray[np.float32], NDArray[np.uint8], dict[str, str]]:
    """One synthetic subject as normalised slices.

    Returns
    -------
    images : ndarray of float32, shape (n, X, Y)
        Normalised slices on the ``canvas_px`` grid of ``pixel_mm`` pixels.
    labels : ndarray of uint8, shape (n, X, Y)
        Muscle labels 0..11.
    meta : dict
        ``severity`` and ``contrast`` used.
    """
    sev = severity or str(rng.choice(_SEVERITIES, p=np.asarray(config.severity_weights)))
    weights = np.asarray(config.contrast_weights, dtype=np.float64)
    con = contrast or str(rng.choice(config.contrasts, p=weights / weights.sum()))
    labels = source.labels
    nz = labels.shape[2]
    if nz > config.max_slices_per_volume:
        with_muscle = np.nonzero(labels.any(axis=(0, 1)))[0]
        pool = with_muscle if with_muscle.size >= config.max_slices_per_volume else np.arange(nz)
        keep = np.sort(rng.choice(pool, size=config.max_slices_per_volume, replace=False))
        labels = labels[:, :, keep]
    geometry: dict[str, Any] = {}
    if augment_geometry:
        geometry = {
            "rotation_deg": float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)),
            "scale": float(rng.uniform(0.88, 1.12)),
            "shift_mm": (float(rng.normal(0, 10)), float(rng.normal(0, 10))),
        }
    volume = synthesize(
        labels,
        source.spacing_mm,
        severity=sev,
        rng=rng,
        contrasts=(con,),
        out_pixel_mm=config.pixel_mm,
        out_shape=config.canvas_px,
        **geometry,
    )
    image = normalize_intensity(volume.images[con])
    has_muscle = volume.labels.any(axis=(0, 1))
    image = np.moveaxis(image[:, :, has_muscle], 2, 0)
    lab = np.moveaxis(volume.labels[:, :, has_muscle], 2, 0)
    return (
        np.ascontiguousarray(image),
        np.ascontiguousarray(lab),
        {"severity": sev, "contrast": con},
    )


def dice_per_label(
    pred: NDArray[np.integer], truth: NDArray[np.integer], labels: Sequence[int]
) -> dict[int, float]:
    """Dice coefficient per label value; NaN where the label is absent from both."""
    out: dict[int, float] = {}
    for k in labels:
        p = pred == k
        t = truth == k
        denom = int(p.sum()) + int(t.sum())
        out[int(k)] = float(2.0 * np.logical_and(p, t).sum() / denom) if denom else float("nan")
    return out


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * one_hot).sum(dim=(0, 2, 3))[1:]
    denom = (prob + one_hot).sum(dim=(0, 2, 3))[1:]
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1.0 - dice.mean())


def _random_crops(
    images: list[NDArray[np.float32]],
    labels: list[NDArray[np.uint8]],
    rng: np.random.Generator,
    batch: int,
    crop: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    xs = np.empty((batch, 1, crop, crop), dtype=np.float32)
    ys = np.empty((batch, crop, crop), dtype=np.int64)
    for b in range(batch):
        i = int(rng.integers(len(images)))
        img, lab = images[i], labels[i]
        nx, ny = img.shape
        muscle = np.argwhere(lab > 0)
        cx, cy = muscle[int(rng.integers(len(muscle)))] if len(muscle) else (nx // 2, ny // 2)
        x0 = int(np.clip(cx - crop // 2 + rng.integers(-16, 17), 0, max(nx - crop, 0)))
        y0 = int(np.clip(cy - crop // 2 + rng.integers(-16, 17), 0, max(ny - crop, 0)))
        pi = np.zeros((crop, crop), dtype=np.float32)
        pl = np.zeros((crop, crop), dtype=np.uint8)
        sub_i = img[x0 : x0 + crop, y0 : y0 + crop]
        pi[: sub_i.shape[0], : sub_i.shape[1]] = sub_i
        pl[: sub_i.shape[0], : sub_i.shape[1]] = lab[x0 : x0 + crop, y0 : y0 + crop]
        if rng.uniform() < 0.5:  # left-right flip: labels are side-agnostic
            pi, pl = pi[::-1], pl[::-1]
        gamma = float(np.exp(rng.uniform(-0.35, 0.35)))
        xs[b, 0] = np.power(pi, gamma)
        ys[b] = pl
    return torch.from_numpy(xs), torch.from_numpy(ys)


def predict_slices(model: UNet2D, images: NDArray[np.float32], batch: int = 8) -> NDArray[np.uint8]:
    """Arg-max labels of ``(n, X, Y)`` slices whose X and Y are multiples of 2**depth."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch, None])
            out.append(model(x).argmax(dim=1).numpy().astype(np.uint8))
    return np.concatenate(out) if out else np.zeros(images.shape, dtype=np.uint8)


def train_model(
    train_sources: Sequence[LabelSource],
    val_sources: Sequence[LabelSource],
    config: TrainConfig,
    log: Log = print,
    on_round: Callable[[UNet2D, list[dict[str, Any]]], None] | None = None,
    extra_slices: Sequence[tuple[NDArray[np.float32], NDArray[np.uint8]]] = (),
) -> tuple[UNet2D, list[dict[str, Any]]]:
    """Train from scratch; return the network (eval mode) and the per-round history.

    ``on_round(model, history)`` is called after every round (e.g. to checkpoint); it must not
    change the model. ``extra_slices`` are real ``(images, labels)`` slice stacks (e.g. user-
    corrected cases, :mod:`qmri.segmentation.corrections`) that join the pool from the start.
    """
    if not train_sources:
        raise ValueError("no training label maps")
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(config.unet)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total = config.rounds * config.steps_per_round

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        t = (step - config.warmup_steps) / max(total - config.warmup_steps, 1)
        return config.learning_rate * 0.5 * (1.0 + np.cos(np.pi * t))

    val_rng = np.random.default_rng(config.seed + 1)
    val_set = []
    for i, source in enumerate(val_sources):
        con = config.contrasts[i % len(config.contrasts)]
        for sev in _SEVERITIES:
            img, lab, _ = make_training_slices(
                source, val_rng, config, severity=sev, contrast=con, augment_geometry=False
            )
            val_set.append((sev, img, lab))
    pool_images: list[NDArray[np.float32]] = []
    pool_labels: list[NDArray[np.uint8]] = []
    for images, labels in extra_slices:
        pool_images.extend(images)
        pool_labels.extend(labels)
    history: list[dict[str, Any]] = []
    step = 0
    start = time.monotonic()
    for rnd in range(config.rounds):
        t_gen = time.monotonic()
        for source in train_sources:
            img, lab, _ = make_training_slices(source, rng, config)
            pool_images.extend(img)
            pool_labels.extend(lab)
        gen_s = time.monotonic() - t_gen
        model.train()
        losses = []
        for _ in range(config.steps_per_round):
            for group in optimiser.param_groups:
                group["lr"] = lr_at(step)
            x, y = _random_crops(pool_images, pool_labels, rng, config.batch_size, config.crop_px)
            loss = _loss(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
        record: dict[str, Any] = {
            "round": rnd + 1,
            "steps": step,
            "pool_slices": len(pool_images),
            "generation_s": round(gen_s, 1),
            "elapsed_s": round(time.monotonic() - start, 1),
            "train_loss": round(float(np.mean(losses)), 4),
        }
        if val_set:
            by_sev: dict[str, list[float]] = {}
            for sev, img, lab in val_set:
                pred = predict_slices(model, img)
                d = dice_per_label(pred, lab, range(1, N_MUSCLES + 1))
                by_sev.setdefault(sev, []).append(float(np.nanmean(list(d.values()))))
            record["val_dice"] = {k: round(float(np.mean(v)), 4) for k, v in by_sev.items()}
        history.append(record)
        log(json.dumps(record))
        if on_round is not None:
            model.eval()
            on_round(model, history)
    model.eval()
    return model, history


def save_model(
    model: UNet2D,
    out_dir: Path,
    *,
    name: str,
    version: str,
    config: TrainConfig,
    history: list[dict[str, Any]],
    data: dict[str, Any],
) -> Path:
    """Write ``weights.pt`` (state dict) and ``manifest.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "weights.pt"
    torch.save(model.state_dict(), weights)
    manifest = {
        "name": name,
        "version": version,
        "anatomy": "thigh",
        "format": "state_dict",
        "architecture": "unet2d",
        "architecture_config": config.unet.to_dict(),
        "weights": weights.name,
        "input": {
            "contrasts": list(config.contrasts),
            "orientation": "RAS, axial slices (axis 2)",
            "pixel_mm": config.pixel_mm,
            "normalisation": "divide by the volume's 99.5th percentile, clip to [0, 2]",
            "size_multiple": 2**config.unet.depth,
        },
        "network_labels": {"0": "background"} | {str(i + 1): n for i, n in enumerate(MUSCLE_NAMES)},
        "training": {"config": config.to_dict(), "history": history, "data": data},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    return out_dir


def _sources(paths: Sequence[Path]) -> list[LabelSource]:
    out = []
    for path in paths:
        lm = load_label_map(path)
        out.append(LabelSource(name=lm.name, labels=lm.labels, spacing_mm=lm.spacing_mm))
    return out


def train_from_labels_dir(
    labels_dir: Path,
    out_dir: Path,
    *,
    config: TrainConfig | None = None,
    name: str = "thigh-unet-v1",
    version: str = MODEL_VERSION,
    log: Log = print,
    corrections_dirs: Sequence[Path] = (),
) -> Path:
    """Train on the train part of the subject split of ``labels_dir`` and save the model.

    ``labels_dir`` is the folder of real thigh label maps (``../shared/data/labels/
    thigh_11_muscles`` beside the checkout); only its ``train`` subjects are used for training,
    its ``val`` subjects for the per-round validation score, never its ``test`` subjects.
    ``corrections_dirs`` are exported user-corrected cases (real images with corrected labels,
    ``myovault segment-corrections export``) added to the training pool.
    """
    from qmri.segmentation.corrections import correction_slices, load_corrections_dir

    cfg = config or TrainConfig()
    parts = split_files(Path(labels_dir))
    train_sources = _sources(parts["train"])
    val_sources = _sources(parts["val"])
    corrections = [case for d in corrections_dirs for case in load_corrections_dir(Path(d))]
    extra = [correction_slices(case, cfg.pixel_mm) for case in corrections]
    log(
        f"training on {len(train_sources)} label maps + {len(corrections)} corrected cases"
        f" ({sum(len(x[0]) for x in extra)} slices), validating on {len(val_sources)}"
    )
    data = {
        "label_maps": "thigh_11_muscles (Apache-2.0), read from --labels-dir, not shipped",
        "train_files": [p.name for p in parts["train"]],
        "val_files": [p.name for p in parts["val"]],
        "test_files": [p.name for p in parts["test"]],
    }
    if corrections:
        data["corrected_cases"] = [case.name for case in corrections]

    def checkpoint(model: UNet2D, history: list[dict[str, Any]]) -> None:
        save_model(
            model, out_dir, name=name, version=version, config=cfg, history=history, data=data
        )

    model, history = train_model(
        train_sources, val_sources, cfg, log, on_round=checkpoint, extra_slices=extra
    )
    return save_model(
        model, out_dir, name=name, version=version, config=cfg, history=history, data=data
    )
