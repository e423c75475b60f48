"""A parametric thigh shape model for making synthetic subjects without real label maps.

``make demo`` runs on machines that do not have the real label maps, so the demo subjects are
drawn from a small statistical model committed as ``data/shape_model.json``: for three
proximal-to-distal stations, every muscle of a (right) thigh is an ellipse given by its mean
centroid offset from the thigh centre (mm), its mean second-moment matrix (mm^2) and how often it
is present; the femur is a disk at its mean offset. The numbers were computed once from the
training part of the real label maps by :func:`build_shape_model` (run
``python -m qmri.phantom.shape_model --labels-dir ../shared/data/labels/thigh_11_muscles``).

Rendering assigns every pixel to the muscle whose ellipse it lies deepest inside (normalised
Mahalanobis distance < 1), carves out the femur, and mirrors the model for the left thigh.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from qmri.phantom.anatomy import midline_index
from qmri.phantom.labelmaps import N_MUSCLES, LabelMap, load_label_map, split_files
from qmri.segmentation.errors import PhantomError

__all__ = ["N_STATIONS", "build_shape_model", "load_shape_model", "render_labels"]

N_STATIONS = 3
_INPLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
_INPLANE_CROSS[1, :, 1] = True
_INPLANE_CROSS[:, 1, 1] = True


def _femur_centre(muscle: NDArray[np.bool_], pixel_mm: float) -> tuple[float, float, float] | None:
    """Deepest non-muscle point inside the closed muscle outline of one 2D thigh (x, y, depth)."""
    r = max(int(round(6.0 / pixel_mm)), 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = xx**2 + yy**2 <= r * r
    core = ndimage.binary_fill_holes(ndimage.binary_closing(muscle, disk) | muscle)
    holes = core & ~muscle
    if not holes.any():
        return None
    depth = ndimage.distance_transform_edt(holes) * pixel_mm
    ix, iy = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(ix), float(iy), float(depth.max())


def build_shape_model(label_maps: Sequence[LabelMap]) -> dict[str, Any]:
    """Compute the ellipse statistics of :mod:`qmri.phantom.shape_model` from label maps.

    Each thigh slice is expressed in mm relative to the centroid of its muscles, the left thigh
    mirrored onto the right (RAS: +x is towards the subject's right, i.e. lateral for the right
    thigh). Slices are assigned to stations by their position within the muscle-bearing slice
    range (station 0 = proximal).
    """
    acc: list[dict[str, Any]] = [
        {
            "n": 0,
            "area": np.zeros(N_MUSCLES),
            "present": np.zeros(N_MUSCLES),
            "centroid": np.zeros((N_MUSCLES, 2)),
            "cov": np.zeros((N_MUSCLES, 2, 2)),
            "femur": [],
            "separation": [],
        }
        for _ in range(N_STATIONS)
    ]
    for lm in label_maps:
        sx, sy = lm.spacing_mm[0], lm.spacing_mm[1]
        pixel = float(np.sqrt(sx * sy))
        mid = midline_index(lm.labels > 0)
        zs = np.nonzero(lm.labels.any(axis=(0, 1)))[0]
        if zs.size == 0:
            continue
        z_lo, z_hi = zs[0], zs[-1]
        for z in zs:
            rel = (z_hi - z) / max(z_hi - z_lo, 1)  # RAS: high z is proximal
            st = acc[min(int(rel * N_STATIONS), N_STATIONS - 1)]
            centres = []
            for side, sl in (("right", slice(mid, None)), ("left", slice(0, mid))):
                lab = lm.labels[sl, :, z]
                if not (lab > 0).any():
                    continue
                x0 = mid if side == "right" else 0
                pts = np.argwhere(lab > 0).astype(np.float64)
                cen = pts.mean(axis=0)
                centres.append((x0 + cen[0]) * sx)
                mirror = 1.0 if side == "right" else -1.0
                st["n"] += 1
                for m in range(1, N_MUSCLES + 1):
                    p = np.argwhere(lab == m).astype(np.float64)
                    if len(p) < 5:
                        continue
                    d = (p - cen) * np.array([sx * mirror, sy])
                    st["present"][m - 1] += 1
                    st["area"][m - 1] += len(p) * sx * sy
                    st["centroid"][m - 1] += d.mean(axis=0)
                    st["cov"][m - 1] += np.cov(d.T)
                femur = _femur_centre(lab > 0, pixel)
                if femur is not None and femur[2] >= 4.0:
                    fx = (femur[0] - cen[0]) * sx * mirror
                    fy = (femur[1] - cen[1]) * sy
                    st["femur"].append((fx, fy))
            if len(centres) == 2:
                st["separation"].append(abs(centres[0] - centres[1]))
    stations = []
    for st in acc:
        if st["n"] == 0:
            raise PhantomError("a station received no slices; need more label maps")
        present = np.maximum(st["present"], 1)
        muscles = []
        for m in range(N_MUSCLES):
            muscles.append(
                {
                    "presence": round(float(st["present"][m] / st["n"]), 3),
                    "centroid_mm": [round(float(v), 2) for v in st["centroid"][m] / present[m]],
                    "cov_mm2": [
                        [round(float(v), 2) for v in row] for row in st["cov"][m] / present[m]
                    ],
                    "area_mm2": round(float(st["area"][m] / present[m]), 1),
                }
            )
        femur_xy = np.asarray(st["femur"]) if st["femur"] else np.zeros((1, 2))
        stations.append(
            {
                "muscles": muscles,
                "femur_centre_mm": [round(float(v), 2) for v in femur_xy.mean(axis=0)],
                "thigh_separation_mm": round(float(np.mean(st["separation"] or [220.0])), 1),
                "n_thigh_slices": int(st["n"]),
            }
        )
    return {
        "version": 1,
        "description": "Per-station muscle ellipses of a right thigh (RAS mm, relative to the "
        "muscle centroid; +x lateral, +y anterior); station 0 proximal.",
        "source": "train split of thigh_11_muscles label maps (Apache-2.0)",
        "n_label_maps": len(label_maps),
        "femur_radius_mm": 13.0,
        "stations": stations,
    }


def load_shape_model() -> dict[str, Any]:
    """The committed model (``data/shape_model.json``)."""
    text = resources.files("qmri.phantom").joinpath("data/shape_model.json").read_text("utf-8")
    model: dict[str, Any] = json.loads(text)
    if model.get("version") != 1 or len(model.get("stations", [])) != N_STATIONS:
        raise PhantomError("shape_model.json has an unknown version or station count")
    return model


def _station_params(model: dict[str, Any], t: float) -> dict[str, Any]:
    """Linear interpolation of station parameters at relative position t (0 proximal)."""
    pos = np.clip(t * N_STATIONS - 0.5, 0.0, N_STATIONS - 1.0)
    i0 = int(np.floor(pos))
    i1 = min(i0 + 1, N_STATIONS - 1)
    w = pos - i0
    a, b = model["stations"][i0], model["stations"][i1]

    def mix(key_a: Any, key_b: Any) -> NDArray[np.float64]:
        return (1 - w) * np.asarray(key_a, dtype=np.float64) + w * np.asarray(key_b, np.float64)

    muscles = []
    for ma, mb in zip(a["muscles"], b["muscles"], strict=True):
        muscles.append(
            {
                "presence": float(mix(ma["presence"], mb["presence"])),
                "centroid": mix(ma["centroid_mm"], mb["centroid_mm"]),
                "cov": mix(ma["cov_mm2"], mb["cov_mm2"]),
            }
        )
    return {
        "muscles": muscles,
        "femur": mix(a["femur_centre_mm"], b["femur_centre_mm"]),
        "separation": float(mix(a["thigh_separation_mm"], b["thigh_separation_mm"])),
    }


def render_labels(
    rng: np.random.Generator,
    *,
    model: dict[str, Any] | None = None,
    n_slices: int = 20,
    slice_mm: float = 8.0,
    pixel_mm: float = 1.0,
    size_px: tuple[int, int] = (440, 260),
) -> tuple[NDArray[np.uint8], tuple[float, float, float]]:
    """Draw a two-thigh muscle label volume from the shape model.

    Parameters
    ----------
    rng : numpy.random.Generator
        Subject variation: thigh size (+-15 %), muscle position jitter (3 mm), separation.
    model : dict, optional
        A shape model; the committed one by default.
    n_slices, slice_mm : int, float
        Number and thickness of axial slices, proximal (highest index) to distal.
    pixel_mm : float
        In-plane pixel size.
    size_px : (int, int)
        In-plane size (x, y).

    Returns
    -------
    labels : ndarray of uint8, shape (x, y, z)
        Muscle labels 0..11 on RAS axes.
    spacing_mm : (float, float, float)
    """
    shape_model = model if model is not None else load_shape_model()
    nx, ny = size_px
    labels = np.zeros((nx, ny, n_slices), dtype=np.uint8)
    size = float(rng.uniform(0.85, 1.15))
    sep_scale = float(rng.uniform(0.92, 1.08))
    jitter = rng.normal(0.0, 3.0, (2, N_MUSCLES, 2))
    xx, yy = np.mgrid[0:nx, 0:ny].astype(np.float64)
    xx = (xx - (nx - 1) / 2) * pixel_mm
    yy = (yy - (ny - 1) / 2) * pixel_mm
    femur_r = float(shape_model["femur_radius_mm"]) * size
    for z in range(n_slices):
        t = 1.0 - (z + 0.5) / n_slices  # z = n-1 is proximal (t ~ 0)
        params = _station_params(shape_model, t)
        half = params["separation"] * size * sep_scale / 2
        for s, (side, mirror) in enumerate((("right", 1.0), ("left", -1.0))):
            cx = half if side == "right" else -half
            dx = (xx - cx) * mirror
            dy = yy
            best = np.full((nx, ny), np.inf)
            lab = np.zeros((nx, ny), dtype=np.uint8)
            for m, mp in enumerate(params["muscles"]):
                if mp["presence"] < 0.25:
                    continue
                cov = mp["cov"] * size**2 * min(mp["presence"] / 0.9, 1.0)
                c = mp["centroid"] * size + jitter[s, m]
                try:
                    inv = np.linalg.inv(cov)
                except np.linalg.LinAlgError:
                    continue
                ex, ey = dx - c[0], dy - c[1]
                d2 = (inv[0, 0] * ex * ex + 2 * inv[0, 1] * ex * ey + inv[1, 1] * ey * ey) / 4.0
                win = (d2 < 1.0) & (d2 < best)
                best[win] = d2[win]
                lab[win] = m + 1
            fx, fy = params["femur"] * size
            lab[(dx - fx) ** 2 + (dy - fy) ** 2 <= femur_r**2] = 0
            region = (dx > -params["separation"] * size / 2) & (lab > 0)
            labels[:, :, z][region] = lab[region]
    return labels, (pixel_mm, pixel_mm, slice_mm)


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild data/shape_model.json")
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    maps = [load_label_map(p) for p in split_files(args.labels_dir)["train"]]
    args.out.write_text(json.dumps(build_shape_model(maps), indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    _main()
