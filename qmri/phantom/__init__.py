"""Synthetic thigh phantoms for training and demonstrating muscle segmentation.

Public API
----------
make_subject(seed, severity="moderate", shape="parametric", ...) -> dict
    One synthetic subject (all contrasts, true labels with sides, true FF / T2 maps,
    ``spacing_mm`` and a RAS ``affine``). ``shape="parametric"`` needs no real data (the
    committed shape model); passing a :class:`LabelMap` uses real anatomy.
synthesize(labels, spacing_mm, severity=..., rng=...) -> SyntheticVolume
    The generator behind it (see :mod:`qmri.phantom.synth`).
load_label_map(path), split_files(labels_dir), load_split()
    Real label maps (read from ``--labels-dir``, never shipped) and the fixed subject split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qmri.phantom.contrast import CONTRASTS
from qmri.phantom.labelmaps import (
    MUSCLE_NAMES,
    N_MUSCLES,
    LabelMap,
    load_label_map,
    load_split,
    split_files,
)
from qmri.phantom.shape_model import render_labels
from qmri.phantom.synth import Acquisition, SyntheticVolume, synthesize
from qmri.phantom.tissue import SEVERITIES
from qmri.segmentation.errors import PhantomError
from qmri.segmentation.labels import to_side_labels

__all__ = [
    "CONTRASTS",
    "MUSCLE_NAMES",
    "N_MUSCLES",
    "SEVERITIES",
    "Acquisition",
    "LabelMap",
    "SyntheticVolume",
    "load_label_map",
    "load_split",
    "make_subject",
    "split_files",
    "synthesize",
]


def make_subject(
    seed: int,
    severity: str = "moderate",
    shape: str | LabelMap = "parametric",
    *,
    contrasts: tuple[str, ...] = CONTRASTS,
    pixel_mm: float = 1.5,
    n_slices: int = 20,
    slice_mm: float = 8.0,
    acquisition: Acquisition | None = None,
) -> dict[str, Any]:
    """Make one seeded synthetic subject with true labels.

    Parameters
    ----------
    seed : int
        Seed of everything random (anatomy, disease, noise).
    severity : {"healthy", "moderate", "severe"}
        Fat-replacement group.
    shape : "parametric" or LabelMap
        ``"parametric"`` draws the muscles from the committed shape model (works without
        any real data, e.g. for ``make demo``); a :class:`LabelMap` uses its real anatomy.
    contrasts : tuple of str
        Images to simulate (``water``, ``fat``, ``ff``, ``mese``, ``gre``).
    pixel_mm : float
        In-plane voxel size of the output.
    n_slices, slice_mm : int, float
        Slices of the parametric shape (ignored for a label map, whose slices are kept).
    acquisition : Acquisition, optional
        Fixed acquisition; default: 3 T, 2 % noise, mild bias field, TE 2.3 ms, ESP 10 ms.

    Returns
    -------
    dict
        ``<contrast>``: float32 (x, y, z) images; ``labels``: uint8 (x, y, z) true labels with
        sides (1..11 right, 12..22 left, see :mod:`qmri.segmentation.labels`);
        ``muscle_labels``: uint8 0..11; ``ff_true`` (fraction) and ``t2_water_true_ms``:
        float32 maps; ``spacing_mm``; ``affine`` (4 x 4 RAS); ``severity``; ``seed``;
        ``involvement`` ({"ff", "t2_water_ms"}: 2 x 11 lists, side 0 = right).
    """
    if severity not in SEVERITIES:
        raise PhantomError(f"unknown severity {severity!r}; expected one of {SEVERITIES}")
    rng = np.random.default_rng(seed)
    if isinstance(shape, LabelMap):
        labels, spacing = shape.labels, shape.spacing_mm
    elif shape == "parametric":
        labels, spacing = render_labels(rng, n_slices=n_slices, slice_mm=slice_mm)
    else:
        raise PhantomError(f"shape must be 'parametric' or a LabelMap, got {shape!r}")
    volume = synthesize(
        labels,
        spacing,
        severity=severity,
        rng=rng,
        contrasts=contrasts,
        out_pixel_mm=pixel_mm,
        acquisition=acquisition or Acquisition(),
    )
    right = (np.arange(volume.labels.shape[0]) >= volume.midline)[:, None, None]
    out: dict[str, Any] = dict(volume.images)
    out.update(
        labels=to_side_labels(volume.labels, right),
        muscle_labels=volume.labels,
        ff_true=volume.ff_true,
        t2_water_true_ms=volume.t2_water_true_ms,
        spacing_mm=volume.spacing_mm,
        affine=volume.affine,
        severity=severity,
        seed=seed,
        involvement={
            "ff": volume.involvement.ff.round(4).tolist(),
            "t2_water_ms": volume.involvement.t2_water_ms.round(2).tolist(),
        },
    )
    return out
