"""``myovault fit t2|dixon`` and the ORMIR-MIDS I/O behind them (synthetic files in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from qmri import __version__
from qmri.epg import cpmg_echo_train
from qmri.fat_spectrum import fat_signal
from qmri.io import output_stem
from repository.cli.fit import fit

AFFINE = np.diag([1.5, 1.5, 5.0, 1.0])


def _save(path: Path, data: np.ndarray, sidecar: dict | None) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), str(path))
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def _mese(tmp_path: Path, n_echoes: int = 17) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    t2 = np.full((10, 10, 2), 35.0)
    t2[:5] = 28.0
    ff = np.zeros_like(t2)
    ff[:, :3] = 0.95  # "subcutaneous fat"
    ff[:, 3:6] = 0.2
    b1 = 0.85 + 0.01 * np.arange(10)[None, :, None] * np.ones_like(t2)
    kw = {"echo_spacing_ms": 10.0, "n_echoes": n_echoes}
    sig = (1 - ff)[..., None] * cpmg_echo_train(t2, b1, t1_ms=1400.0, **kw)
    sig = sig + ff[..., None] * cpmg_echo_train(151.0, b1, t1_ms=365.0, **kw)
    sig = np.abs(1000 * sig + rng.normal(0, 2, sig.shape))
    te = (10.0 * np.arange(1, n_echoes + 1)).tolist()
    path = _save(
        tmp_path / "sub-01_ses-1_MESE.nii.gz",
        sig,
        {"EchoTime": te, "MagneticFieldStrength": 3.0, "Manufacturer": "Siemens"},
    )
    return path, t2


def test_fit_t2_cli_writes_maps_and_sidecars(tmp_path: Path) -> None:
    path, t2 = _mese(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(fit, ["t2", str(path), "-o", str(out), "--b1-smoothing-mm", "0"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    for expected in (
        "sub-01_ses-1_T2.nii.gz",
        "sub-01_ses-1_B1.nii.gz",
        "sub-01_ses-1_desc-mese_FF.nii.gz",
        "sub-01_ses-1_desc-monoexp_T2.nii.gz",
        "sub-01_ses-1_desc-t2fit_RESIDUAL.nii.gz",
        "sub-01_ses-1_T2.json",
    ):
        assert expected in names
    assert not [n for n in names if "partial" in n]
    t2_map = nib.load(str(out / "sub-01_ses-1_T2.nii.gz")).get_fdata()
    muscle = np.zeros(t2.shape, bool)
    muscle[:, 3:] = True
    assert np.median(np.abs(t2_map - t2)[muscle]) < 1.0
    np.testing.assert_allclose(nib.load(str(out / "sub-01_ses-1_T2.nii.gz")).affine, AFFINE)
    sc = json.loads((out / "sub-01_ses-1_T2.json").read_text())
    assert sc["Units"] == "ms"
    assert sc["SoftwareVersion"] == __version__
    assert sc["Sources"] == ["sub-01_ses-1_MESE.nii.gz"]
    assert sc["ModelParameters"]["fat_t2_ms"] == 151.0
    assert "EPG" in sc["Method"]
    ff_sc = json.loads((out / "sub-01_ses-1_desc-mese_FF.json").read_text())
    assert ff_sc["Units"] == "%"


def test_fit_t2_cli_calibrates_fat_t2(tmp_path: Path) -> None:
    path, _ = _mese(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(fit, ["t2", str(path), "-o", str(out), "--calibrate-fat-t2"])
    assert result.exit_code == 0, result.output
    sc = json.loads((out / "sub-01_ses-1_T2.json").read_text())
    assert sc["ModelParameters"]["fat_t2_calibrated"] is True
    assert abs(sc["ModelParameters"]["fat_t2_ms"] - 151.0) < 10.0


def test_fit_t2_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    path, _ = _mese(tmp_path)
    path.with_name("sub-01_ses-1_MESE.json").unlink()
    result = runner.invoke(fit, ["t2", str(path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "sidecar" in result.output
    short = _save(
        tmp_path / "sub-02_MESE.nii.gz", np.ones((4, 4, 1, 3)), {"EchoTime": [10, 20, 30]}
    )
    result = runner.invoke(fit, ["t2", str(short), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "echoes" in result.output
    bad = _save(
        tmp_path / "sub-03_MESE.nii.gz", np.ones((4, 4, 1, 5)), {"EchoTime": [10, 20, 30, 40]}
    )
    result = runner.invoke(fit, ["t2", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "5 echoes" in result.output
    secs = _save(
        tmp_path / "sub-04_MESE.nii.gz",
        np.ones((4, 4, 1, 4)),
        {"EchoTime": [0.01, 0.02, 0.03, 0.04]},
    )
    result = runner.invoke(fit, ["t2", str(secs), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "seconds" in result.output


def _megre_signal() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    n = 24
    yy, xx = np.mgrid[0:n, 0:n] / (n - 1)
    ff = np.clip(xx, 0, 0.95)[..., None] * np.ones((1, 1, 2))
    b0 = (60 * (yy - 0.5))[..., None] * np.ones((1, 1, 2))
    te = 1.2 + 1.0 * np.arange(6)
    rho = (1 - ff)[..., None] + ff[..., None] * fat_signal(te, 3.0)
    sig = 800 * rho * np.exp((2j * np.pi * b0[..., None] - 40.0) * te * 1e-3)
    sig = sig + 8 * (rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape))
    return sig, ff, te


def test_fit_dixon_cli_real_imag(tmp_path: Path) -> None:
    sig, ff, te = _megre_signal()
    side = {"EchoTime": te.tolist(), "MagneticFieldStrength": 3.0, "Manufacturer": "GE"}
    _save(tmp_path / "sub-01_ses-1_MEGRE.nii.gz", np.abs(sig), side)
    _save(tmp_path / "sub-01_ses-1_part-real_MEGRE.nii.gz", sig.real, side)
    _save(tmp_path / "sub-01_ses-1_part-imag_MEGRE.nii.gz", sig.imag, side)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        fit, ["dixon", str(tmp_path / "sub-01_ses-1_MEGRE.nii.gz"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    for suffix, unit in (
        ("FF", "%"),
        ("B0", "Hz"),
        ("R2STAR", "1/s"),
        ("WATER", "a.u."),
        ("FAT", "a.u."),
    ):
        assert (out / f"sub-01_ses-1_{suffix}.nii.gz").is_file()
        assert json.loads((out / f"sub-01_ses-1_{suffix}.json").read_text())["Units"] == unit
    ffmap = nib.load(str(out / "sub-01_ses-1_FF.nii.gz")).get_fdata()
    assert np.nanmedian(np.abs(ffmap - 100 * ff)) < 1.5
    sc = json.loads((out / "sub-01_ses-1_FF.json").read_text())
    assert sc["Sources"] == [
        "sub-01_ses-1_part-real_MEGRE.nii.gz",
        "sub-01_ses-1_part-imag_MEGRE.nii.gz",
    ]
    assert sc["ModelParameters"]["field_strength_t"] == 3.0


def test_fit_dixon_cli_mag_phase_siemens_and_unknown_scaling(tmp_path: Path) -> None:
    sig, ff, te = _megre_signal()
    side = {"EchoTime": te.tolist(), "MagneticFieldStrength": 3.0, "Manufacturer": "SIEMENS"}
    phase = np.round((np.angle(sig) + np.pi) / (2 * np.pi) * 4096) % 4096
    _save(tmp_path / "sub-01_MEGRE.nii.gz", np.abs(sig), side)
    _save(tmp_path / "sub-01_part-phase_MEGRE.nii.gz", phase, side)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        fit, ["dixon", str(tmp_path / "sub-01_part-phase_MEGRE.nii.gz"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    ffmap = nib.load(str(out / "sub-01_FF.nii.gz")).get_fdata()
    assert np.nanmedian(np.abs(ffmap - 100 * ff)) < 1.5
    # Same phase values from an unknown vendor: fail closed unless the range is given.
    other = {**side, "Manufacturer": "Acme"}
    _save(tmp_path / "sub-02_MEGRE.nii.gz", np.abs(sig), other)
    _save(tmp_path / "sub-02_part-phase_MEGRE.nii.gz", phase, other)
    runner = CliRunner()
    result = runner.invoke(fit, ["dixon", str(tmp_path / "sub-02_MEGRE.nii.gz"), "-o", str(out)])
    assert result.exit_code == 1
    assert "unknown phase scaling" in result.output
    result = runner.invoke(
        fit,
        [
            "dixon",
            str(tmp_path / "sub-02_MEGRE.nii.gz"),
            "-o",
            str(out),
            "--phase-range",
            "0",
            "4096",
        ],
    )
    assert result.exit_code == 0, result.output


def test_fit_dixon_cli_errors(tmp_path: Path) -> None:
    sig, _, te = _megre_signal()
    runner = CliRunner()
    side = {"EchoTime": te.tolist(), "MagneticFieldStrength": 3.0}
    _save(tmp_path / "sub-01_MEGRE.nii.gz", np.abs(sig), side)
    result = runner.invoke(
        fit, ["dixon", str(tmp_path / "sub-01_MEGRE.nii.gz"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "companions" in result.output
    _save(tmp_path / "sub-01_part-real_MEGRE.nii.gz", sig.real, side)
    _save(tmp_path / "sub-01_part-imag_MEGRE.nii.gz", sig.imag[:20], side)
    result = runner.invoke(
        fit, ["dixon", str(tmp_path / "sub-01_MEGRE.nii.gz"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "shapes differ" in result.output
    no_field = {"EchoTime": te.tolist()}
    _save(tmp_path / "sub-02_part-real_MEGRE.nii.gz", sig.real, no_field)
    _save(tmp_path / "sub-02_part-imag_MEGRE.nii.gz", sig.imag, no_field)
    result = runner.invoke(
        fit, ["dixon", str(tmp_path / "sub-02_part-real_MEGRE.nii.gz"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "MagneticFieldStrength" in result.output


def test_fit_dixon_cli_vendor_water_fat(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 32
    ff = np.zeros((n, n, 1))
    body = np.zeros((n, n, 1), bool)
    body[4:28, 4:28] = True
    ff[4:28, 4:16] = 0.1
    ff[4:28, 16:28] = 0.6
    pd_ = np.where(body, 600.0, 0.0)

    def mag(a: np.ndarray) -> np.ndarray:
        return np.abs(a + 5 * (rng.standard_normal(a.shape) + 1j * rng.standard_normal(a.shape)))

    _save(
        tmp_path / "sub-01_part-water_DIXON.nii.gz",
        mag(pd_ * (1 - ff)),
        {"MagneticFieldStrength": 3.0},
    )
    _save(tmp_path / "sub-01_part-fat_DIXON.nii.gz", mag(pd_ * ff), {"MagneticFieldStrength": 3.0})
    out = tmp_path / "out"
    result = CliRunner().invoke(
        fit, ["dixon", str(tmp_path / "sub-01_part-fat_DIXON.nii.gz"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    ffmap = nib.load(str(out / "sub-01_FF.nii.gz")).get_fdata()
    assert abs(np.nanmedian(ffmap[4:28, 4:16]) - 10) < 1.0
    assert abs(np.nanmedian(ffmap[4:28, 16:28]) - 60) < 1.0
    assert np.isnan(ffmap[0, 0, 0])


def test_output_stem() -> None:
    assert output_stem("a/sub-01_ses-1_acq-x_part-real_MEGRE.nii.gz") == "sub-01_ses-1_acq-x"
    assert output_stem("sub-01_MESE.nii") == "sub-01"


def test_fit_dixon_cli_refuses_ill_conditioned_echo_times(tmp_path: Path) -> None:
    """TE 3.9 / 6.3 ms at 3 T (the GE B0-mapping protocol): B0 + residual only, exit status 2,
    the reason with numbers on stderr; --allow-ill-conditioned writes FF flagged unreliable."""
    rng = np.random.default_rng(2)
    te = np.array([3.9, 6.3])
    yy, xx = np.mgrid[0:20, 0:20] / 19
    ff = np.clip(xx, 0, 0.95)[..., None] * np.ones((1, 1, 2))
    b0 = (40 * (yy - 0.5))[..., None] * np.ones((1, 1, 2))
    rho = (1 - ff)[..., None] + ff[..., None] * fat_signal(te, 3.0)
    sig = 800 * rho * np.exp(2j * np.pi * b0[..., None] * te * 1e-3)
    sig = sig + 8 * (rng.standard_normal(sig.shape) + 1j * rng.standard_normal(sig.shape))
    side = {"EchoTime": te.tolist(), "MagneticFieldStrength": 3.0, "Manufacturer": "GE"}
    _save(tmp_path / "sub-01_part-real_MEGRE.nii.gz", sig.real, side)
    _save(tmp_path / "sub-01_part-imag_MEGRE.nii.gz", sig.imag, side)
    src = str(tmp_path / "sub-01_part-real_MEGRE.nii.gz")
    out = tmp_path / "out"
    result = CliRunner().invoke(fit, ["dixon", src, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "turns by only 25 deg" in result.output and "NOT written" in result.output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [
        "sub-01_B0.nii.gz",
        "sub-01_desc-dixon_RESIDUAL.nii.gz",
    ]
    b0_side = json.loads((out / "sub-01_B0.json").read_text())
    assert b0_side["ModelParameters"]["well_conditioned"] is False
    assert "uncertain by up to 29 Hz" in b0_side["Description"]
    b0_map = nib.load(str(out / "sub-01_B0.nii.gz")).get_fdata()
    assert np.nanmedian(np.abs(b0_map - b0)) < 30.0
    forced = tmp_path / "forced"
    result = CliRunner().invoke(fit, ["dixon", src, "-o", str(forced), "--allow-ill-conditioned"])
    assert result.exit_code == 0, result.output
    ff_side = json.loads((forced / "sub-01_FF.json").read_text())
    assert "do not use them quantitatively" in ff_side["ModelParameters"]["ff_reliability"]
