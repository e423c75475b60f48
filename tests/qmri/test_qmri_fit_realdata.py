"""Fits on the real samples in ../shared/data: plausible values and PNG previews.

Previews are written to ``test-output/qmri/`` (gitignored) for a human look. Plausibility
criteria from issue 5: healthy thigh muscle FF a few %, subcutaneous fat > 85 %, muscle water T2
~30-40 ms at 3 T.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from qmri.dixon import ff_crlb_std_points, fit_dixon_complex, fit_dixon_magnitude_phase
from qmri.run import run_dixon_fit
from qmri.t2_fit import WaterT2Model, calibrate_fat_t2_ms, fit_water_t2

OUT = Path(__file__).resolve().parents[2] / "test-output" / "qmri"

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _preview(name: str, panels: list[np.ndarray], ranges: list[tuple[float, float]]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    tiles = []
    for img, (lo, hi) in zip(panels, ranges, strict=True):
        t = np.clip((np.nan_to_num(img.astype(float), nan=lo) - lo) / (hi - lo), 0, 1)
        tiles.append(np.pad((np.rot90(t) * 255).astype(np.uint8), ((0, 0), (0, 4))))
    height = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0))) for t in tiles]
    path = OUT / name
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
    return path


def _regions(ff: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Muscle-like (FF < 50 %, away from edges) and fat-like (FF > 50 %) voxels."""
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = True  # erode within slices only (few, thick slices)
    core = ndimage.binary_erosion(mask, structure=in_plane, iterations=2)
    return core & (ff < 50), core & (ff > 50)


def test_siemens_mese_thigh_water_t2(shared_data: Path) -> None:
    files = sorted((shared_data / "real" / "siemens_mese_thigh").glob("*.dcm"))
    assert len(files) == 119
    datasets = [pydicom.dcmread(f) for f in files]
    tes = sorted({float(d.EchoTime) for d in datasets})
    locs = sorted({round(float(d.SliceLocation), 2) for d in datasets})
    first = datasets[0]
    vol = np.zeros((first.Rows, first.Columns, len(locs), len(tes)), np.float32)
    for d in datasets:
        z = locs.index(round(float(d.SliceLocation), 2))
        vol[:, :, z, tes.index(float(d.EchoTime))] = d.pixel_array
    vol = vol[:, :, 2:5]  # three central slices keep the test quick
    mask = vol[..., 0] > 0.05 * np.percentile(vol[..., 0], 99)
    spacing = [float(v) for v in first.PixelSpacing] + [float(first.SliceThickness)]
    sigma = tuple(10.0 / s for s in spacing)
    first_pass = fit_water_t2(vol, tes, mask=mask)
    fat_t2 = calibrate_fat_t2_ms(vol, tes, mask & (first_pass.ff_percent > 90))
    assert 100.0 < fat_t2 < 220.0
    res = fit_water_t2(
        vol, tes, mask=mask, model=WaterT2Model(fat_t2_ms=fat_t2), b1_smoothing_sigma_vox=sigma
    )
    muscle, fat = _regions(res.ff_percent, mask)
    z = 1
    _preview(
        "siemens_mese_thigh.png",
        [vol[:, :, z, 0], res.water_t2_ms[:, :, z], res.ff_percent[:, :, z], res.b1[:, :, z]],
        [(0, float(np.percentile(vol[..., 0], 99))), (20, 60), (0, 100), (0.4, 1.2)],
    )
    assert 30.0 <= np.nanmedian(res.water_t2_ms[muscle]) <= 42.0
    assert np.nanmedian(res.ff_percent[muscle]) < 12.0
    assert np.nanmedian(res.ff_percent[fat]) > 85.0
    assert 0.4 < np.nanmedian(res.b1[mask]) < 1.2
    assert np.nanmedian(res.relative_residual[muscle]) < 0.05


def test_musclemap_three_point_dixon(shared_data: Path) -> None:
    folder = shared_data / "real" / "musclemap_dixon"
    te = [3.45, 4.60, 5.75]
    mags = ["0006-Dixon_TE_345_th", "0008-Dixon_TE_460_th", "0010-Dixon_TE_575_th"]
    phases = ["0007-Dixon_TE_345_th", "0009-Dixon_TE_460_th", "0011-Dixon_TE_575_th"]

    def load(names: list[str]) -> np.ndarray:
        return np.stack(
            [nib.load(str(folder / f"{n}.nii.gz")).get_fdata()[:, :, 4:7] for n in names], -1
        )

    mag, phase = load(mags), load(phases)
    assert phase.min() >= 0 and phase.max() <= 4095
    res = fit_dixon_magnitude_phase(mag, phase, te, 3.0, phase_range=(0, 4096))
    z = 1
    _preview(
        "musclemap_dixon.png",
        [mag[:, :, z, 0], res.ff_percent[:, :, z], res.b0_hz[:, :, z], res.r2star_per_s[:, :, z]],
        [(0, float(np.percentile(mag, 99))), (0, 100), (-150, 150), (0, 150)],
    )
    # Siemens stores the opposite phase sign: the automatic check must find it.
    assert res.parameters["phase_convention_used"] == "conjugate"
    muscle, fat = _regions(res.ff_percent, res.mask)
    assert np.nanmedian(res.ff_percent[muscle]) < 10.0
    assert np.nanmedian(res.ff_percent[fat]) > 85.0
    assert muscle.sum() > fat.sum()  # thighs are mostly muscle: no global swap
    b0 = res.b0_hz[res.mask]
    assert abs(np.nanmedian(b0)) < 100.0
    assert np.nanpercentile(np.abs(b0), 95) < 200.0
    assert 15.0 < np.nanmedian(res.r2star_per_s[muscle]) < 60.0


def test_ge_dual_echo_runs_and_is_flagged_ill_conditioned(
    shared_data: Path, tmp_path: Path
) -> None:
    """The GE sample ("Ax B0map", TE 3.9/6.3 ms) is truly 3 T (ImagingFrequency 127.73 MHz), so
    the fat signal turns by only 25 deg relative to water between the echoes: the fit
    completes, B0 is plausible, FF is flagged unreliable, and the file-level fit (CLI,
    pipeline) refuses to write FF / water / fat (qmri/README.md has the numbers)."""
    parts: dict[tuple[int, float], list[pydicom.Dataset]] = defaultdict(list)
    for f in sorted((shared_data / "real" / "ge_megre_thigh").glob("*.dcm")):
        d = pydicom.dcmread(f)
        parts[(int(d[0x0043, 0x102F].value), float(d.EchoTime))].append(d)
    tes = [3.9, 6.3]

    def vol(part: int, te: float) -> np.ndarray:
        ds = sorted(parts[(part, te)], key=lambda x: float(x.ImagePositionPatient[2]))
        return np.stack([x.pixel_array.astype(np.float32) for x in ds[12:20]], axis=-1)

    first = parts[(2, 3.9)][0]
    assert float(first.MagneticFieldStrength) == 3.0
    assert float(first.ImagingFrequency) == pytest.approx(3.0 * 42.577, rel=0.01)
    sig = np.stack([vol(2, t) + 1j * vol(3, t) for t in tes], axis=-1)
    mag0 = np.stack([vol(0, t) for t in tes], axis=-1)
    # The stored magnitude is |real + i imag| up to reconstruction filtering.
    assert np.median(np.abs(sig)[mag0 > 500] / mag0[mag0 > 500]) == pytest.approx(1.0, abs=0.02)
    res = fit_dixon_complex(sig, tes, 3.0)
    _preview(
        "ge_megre_dual_echo.png",
        [np.abs(sig[:, :, 4, 0]), res.ff_percent[:, :, 4], res.b0_hz[:, :, 4]],
        [(0, float(np.percentile(np.abs(sig), 99))), (0, 100), (-200, 200)],
    )
    assert res.parameters["well_conditioned"] is False
    assert res.parameters["fat_water_separation_deg"] < 30.0
    assert not res.parameters["r2star_fitted"]
    assert np.all(np.isfinite(res.ff_percent[res.mask]))
    assert np.nanpercentile(np.abs(res.b0_hz[res.mask]), 90) < 300.0

    # Noise-only bound at this sample's SNR (median |s1| / background sigma): FF std
    # >= 4 points even with a perfect B0 map, vs < 1 point for a 1.15/2.3 ms pair.
    sigma = float(np.std(sig[..., 0].real[np.abs(sig[..., 0]) < 0.02 * np.abs(sig).max()]))
    snr = float(np.median(np.abs(sig[..., 0])[res.mask])) / sigma
    assert 30.0 < snr < 300.0
    assert ff_crlb_std_points(tes, 3.0, 5.0, snr, b0_known=True) > 3.0
    assert ff_crlb_std_points([1.15, 2.3], 3.0, 5.0, snr) < 1.0
    # The file-level fit refuses FF and says why.
    affine = np.diag([1.84, 1.84, 5.0, 1.0])
    side = {"EchoTime": tes, "MagneticFieldStrength": 3.0, "Manufacturer": "GE"}
    for part, data in (("real", sig.real), ("imag", sig.imag)):
        path = tmp_path / f"sub-ge_part-{part}_MEGRE.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(side))
    warnings: list[str] = []
    written = run_dixon_fit(
        tmp_path / "sub-ge_part-real_MEGRE.nii.gz", tmp_path / "out", warn=warnings.append
    )
    assert sorted(p.name for p in written) == [
        "sub-ge_B0.nii.gz",
        "sub-ge_desc-dixon_RESIDUAL.nii.gz",
    ]
    assert len(warnings) == 1 and "25 deg" in warnings[0] and "NOT written" in warnings[0]
