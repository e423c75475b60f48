"""Synthetic thigh volumes from a muscle label map: anatomy, disease, contrast, acquisition.

Pipeline (all seeded by one :class:`numpy.random.Generator`):

1. resample the muscle labels onto a fine in-plane *work* grid (half the output pixel size)
   with an optional in-plane rotation, scaling and shift (orientation changes);
2. add septa, femur, vessels, subcutaneous fat and skin (:mod:`qmri.phantom.anatomy`);
3. assign per-muscle, per-side fat fraction and water T2 (:mod:`qmri.phantom.tissue`);
4. simulate the requested contrasts (:mod:`qmri.phantom.contrast`), a receive bias field and,
   for MESE, a B1 field;
5. blur to the acquisition resolution, average 2 x 2 work pixels into one output pixel
   (partial volume), add Rician noise.

Slices are kept as they are (axis 2): the generator changes the in-plane geometry only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from qmri.phantom.anatomy import AnatomyParameters, build_tissues, midline_index
from qmri.phantom.contrast import (
    CONTRASTS,
    Contrast,
    add_rician_noise,
    bias_field,
    gre_magnitude,
    mese_first_echo,
)
from qmri.phantom.labelmaps import N_MUSCLES
from qmri.phantom.tissue import MuscleInvolvement, draw_involvement, tissue_maps
from qmri.segmentation.errors import PhantomError

__all__ = ["Acquisition", "SyntheticVolume", "synthesize"]


@dataclass(frozen=True)
class Acquisition:
    """Acquisition settings of one synthetic scan.

    Attributes
    ----------
    field_strength_t : float
        B0 in tesla (fat spectrum frequencies).
    echo_spacing_ms : float
        MESE echo spacing (first echo time), ms.
    te_ms : float
        GRE echo time of the ``gre`` contrast, ms.
    noise_sigma : float
        Noise standard deviation relative to the signal of pure water at full proton density.
    bias_strength : float
        Strength of the multiplicative receive field (0 = none).
    b1_strength : float
        Peak relative deviation of the transmit field used by the MESE contrast.
    resolution_mm : float
        Effective in-plane acquisition resolution; blurs when coarser than the output grid.
    mask_ff_background : bool
        Whether the FF map is set to 0 where water + fat is below 10 % (as many scanners do).
    """

    field_strength_t: float = 3.0
    echo_spacing_ms: float = 10.0
    te_ms: float = 2.3
    noise_sigma: float = 0.02
    bias_strength: float = 0.15
    b1_strength: float = 0.1
    resolution_mm: float = 1.5
    mask_ff_background: bool = True

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Acquisition:
        """Random plausible settings (1.5 or 3 T, TE 1-7 ms, noise 0.5-6 %, blur to 3 mm)."""
        return cls(
            field_strength_t=float(rng.choice([1.5, 3.0])),
            echo_spacing_ms=float(rng.uniform(7.0, 14.0)),
            te_ms=float(rng.uniform(1.0, 7.0)),
            noise_sigma=float(rng.uniform(0.005, 0.06)),
            bias_strength=float(rng.uniform(0.0, 0.35)),
            b1_strength=float(rng.uniform(0.0, 0.25)),
            resolution_mm=float(rng.uniform(1.0, 3.0)),
            mask_ff_background=bool(rng.uniform() < 0.5),
        )


@dataclass
class SyntheticVolume:
    """One synthetic subject on the output grid.

    Attributes
    ----------
    images : dict of str to ndarray, each shape (x, y, z), float32
        Requested contrasts (keys from :data:`qmri.phantom.contrast.CONTRASTS`).
    labels : ndarray of uint8, shape (x, y, z)
        True muscle labels 0..11 (side not encoded; see ``midline``).
    ff_true : ndarray of float32, shape (x, y, z)
        Noise-free proton-density fat fraction (0..1) averaged over each output voxel.
    t2_water_true_ms : ndarray of float32, shape (x, y, z)
        Noise-free water T2 (ms), voxel average.
    spacing_mm : tuple of float
        Output voxel size (x, y, z) in mm; axes are RAS.
    midline : int
        Axis-0 index of the gap between the thighs: x >= midline is the right thigh.
    involvement : MuscleInvolvement
        The per-muscle disease state that generated the images.
    """

    images: dict[str, NDArray[np.float32]]
    labels: NDArray[np.uint8]
    ff_true: NDArray[np.float32]
    t2_water_true_ms: NDArray[np.float32]
    spacing_mm: tuple[float, float, float]
    midline: int
    involvement: MuscleInvolvement
    info: dict[str, float] = field(default_factory=dict)

    @property
    def affine(self) -> NDArray[np.float64]:
        """RAS voxel-to-world affine (origin at the volume centre)."""
        aff = np.diag([*self.spacing_mm, 1.0])
        aff[:3, 3] = -np.asarray(self.spacing_mm) * (np.asarray(self.labels.shape) - 1) / 2
        return aff


def _resample_labels(
    labels: NDArray[np.uint8],
    spacing_mm: Sequence[float],
    work_shape: tuple[int, int],
    work_mm: float,
    rotation_deg: float,
    scale: float,
    shift_mm: tuple[float, float],
) -> NDArray[np.uint8]:
    muscle = np.argwhere(labels > 0)
    if muscle.size == 0:
        raise PhantomError("label map has no muscle voxels")
    s = np.asarray(spacing_mm[:2], dtype=np.float64)
    centre_mm = muscle[:, :2].mean(axis=0) * s + np.asarray(shift_mm)
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    m2 = np.diag(1.0 / s) @ rot * (work_mm / scale)
    centre_work = (np.asarray(work_shape, dtype=np.float64) - 1.0) / 2.0
    offset2 = centre_mm / s - m2 @ centre_work
    matrix = np.eye(3)
    matrix[:2, :2] = m2
    offset = np.array([offset2[0], offset2[1], 0.0])
    out = ndimage.affine_transform(
        labels,
        matrix,
        offset=offset,
        output_shape=(work_shape[0], work_shape[1], labels.shape[2]),
        order=0,
        mode="constant",
        cval=0,
    )
    return np.asarray(out, dtype=np.uint8)


def _block_mean(volume: NDArray[np.float64]) -> NDArray[np.float64]:
    x, y, z = volume.shape
    return volume.reshape(x // 2, 2, y // 2, 2, z).mean(axis=(1, 3))


def _block_majority(labels: NDArray[np.uint8], n_labels: int) -> NDArray[np.uint8]:
    x, y, z = labels.shape
    blocks = labels.reshape(x // 2, 2, y // 2, 2, z)
    counts = np.stack([(blocks == k).sum(axis=(1, 3)) for k in range(n_labels + 1)])
    # ties favour the higher count of muscle over background only when strictly more
    return np.asarray(np.argmax(counts, axis=0), dtype=np.uint8)


def synthesize(
    labels: NDArray[np.uint8],
    spacing_mm: Sequence[float],
    *,
    severity: str,
    rng: np.random.Generator,
    contrasts: Sequence[str] = ("water",),
    out_pixel_mm: float = 2.0,
    out_shape: tuple[int, int] | None = None,
    rotation_deg: float = 0.0,
    scale: float = 1.0,
    shift_mm: tuple[float, float] = (0.0, 0.0),
    acquisition: Acquisition | None = None,
    anatomy: AnatomyParameters | None = None,
    involvement: MuscleInvolvement | None = None,
) -> SyntheticVolume:
    """Build one synthetic thigh volume from a muscle label map.

    Parameters
    ----------
    labels : ndarray of uint8, shape (x, y, z)
        Muscle labels 0..11, RAS axes (e.g. from :func:`qmri.phantom.labelmaps.load_label_map`).
    spacing_mm : sequence of 3 float
        Voxel size of ``labels`` (mm).
    severity : {"healthy", "moderate", "severe"}
        Fat-replacement group (ignored when ``involvement`` is given).
    rng : numpy.random.Generator
        The only source of randomness.
    contrasts : sequence of str
        Any of ``water``, ``fat``, ``ff``, ``mese``, ``gre``.
    out_pixel_mm : float
        In-plane pixel size of the output (mm).
    out_shape : (int, int), optional
        In-plane output size; by default the muscle extent plus 70 mm on each side.
    rotation_deg, scale, shift_mm
        In-plane orientation change applied to the anatomy (degrees, factor, mm).
    acquisition, anatomy, involvement
        Fixed settings; drawn from ``rng`` when omitted.

    Returns
    -------
    SyntheticVolume
    """
    unknown = [c for c in contrasts if c not in CONTRASTS]
    if unknown:
        raise PhantomError(f"unknown contrast(s) {unknown}; expected {CONTRASTS}")
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise PhantomError(f"labels must be 3D (x, y, z), got shape {labels.shape}")
    acq = acquisition if acquisition is not None else Acquisition.draw(rng)
    anat = anatomy if anatomy is not None else AnatomyParameters.draw(rng)
    inv = involvement if involvement is not None else draw_involvement(severity, rng)
    work_mm = out_pixel_mm / 2.0
    if out_shape is None:
        idx = np.argwhere(labels > 0)
        extent_mm = (np.ptp(idx[:, :2], axis=0) + 1) * np.asarray(spacing_mm[:2]) * scale
        out_shape = tuple(int(np.ceil((e + 140.0) / out_pixel_mm / 8.0) * 8) for e in extent_mm)  # type: ignore[assignment]
    assert out_shape is not None  # noqa: S101 - narrowing for the type checker
    work_shape = (2 * out_shape[0], 2 * out_shape[1])
    work_labels = _resample_labels(
        labels.astype(np.uint8), spacing_mm, work_shape, work_mm, rotation_deg, scale, shift_mm
    )
    tissues = build_tissues(work_labels, work_mm, anat, rng)
    mid_work = midline_index(work_labels > 0)
    maps = tissue_maps(tissues, inv, mid_work, work_mm, rng)
    shape3 = tissues.shape
    receive = bias_field(shape3, acq.bias_strength, rng)
    blur_px = np.sqrt(max(acq.resolution_mm**2 - out_pixel_mm**2, 0.0)) / 2.355 / work_mm

    def finish(image: NDArray[np.float64]) -> NDArray[np.float64]:
        if blur_px > 0.3:
            image = ndimage.gaussian_filter(image, sigma=(blur_px, blur_px, 0.0))
        return _block_mean(image)

    water = maps["pd"] * (1.0 - maps["ff"])
    fat = maps["pd"] * maps["ff"]
    images: dict[str, NDArray[np.float32]] = {}
    noisy_water = noisy_fat = None
    if any(c in contrasts for c in ("water", "fat", "ff")):
        noisy_water = add_rician_noise(finish(water * receive), acq.noise_sigma, rng)
        noisy_fat = add_rician_noise(finish(fat * receive), acq.noise_sigma, rng)
    for contrast in contrasts:
        c: Contrast = contrast  # type: ignore[assignment]
        if c == "water":
            assert noisy_water is not None  # noqa: S101
            img = noisy_water
        elif c == "fat":
            assert noisy_fat is not None  # noqa: S101
            img = noisy_fat
        elif c == "ff":
            assert noisy_water is not None and noisy_fat is not None  # noqa: S101
            total = noisy_water + noisy_fat
            img = noisy_fat / np.maximum(total, 1e-6)
            if acq.mask_ff_background:
                img = np.where(total > 0.1, img, 0.0)
        elif c == "mese":
            b1 = 1.0 + acq.b1_strength * (bias_field(shape3, 1.0, rng) - 1.0) / (np.e - 1.0)
            signal = mese_first_echo(maps, b1, echo_spacing_ms=acq.echo_spacing_ms)
            img = add_rician_noise(finish(signal * receive), acq.noise_sigma, rng)
        else:
            signal = gre_magnitude(maps, te_ms=acq.te_ms, field_strength_t=acq.field_strength_t)
            img = add_rician_noise(finish(signal * receive), acq.noise_sigma, rng)
        images[c] = img.astype(np.float32)
    out_labels = _block_majority(work_labels, N_MUSCLES)
    pd_out = _block_mean(maps["pd"])
    ff_true = _block_mean(maps["pd"] * maps["ff"]) / np.maximum(pd_out, 1e-6)
    t2_true = _block_mean(maps["t2_water_ms"])
    return SyntheticVolume(
        images=images,
        labels=out_labels,
        ff_true=ff_true.astype(np.float32),
        t2_water_true_ms=t2_true.astype(np.float32),
        spacing_mm=(out_pixel_mm, out_pixel_mm, float(spacing_mm[2])),
        midline=mid_work // 2,
        involvement=inv,
        info={"noise_sigma": acq.noise_sigma, "resolution_mm": acq.resolution_mm},
    )
