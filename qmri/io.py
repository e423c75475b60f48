"""ORMIR-MIDS input (NIfTI + JSON sidecar) and ``mr-quant`` map output.

Inputs follow the names written by :mod:`ingest.convert`:

* MESE: ``<stem>_MESE.nii.gz`` (x, y, z, echo) with ``<stem>_MESE.json`` beside it holding
  ``EchoTime`` as a list in ms.
* MEGRE: magnitude ``<stem>_MEGRE.nii.gz`` (or ``_part-mag_MEGRE``) with companions
  ``_part-real_MEGRE`` + ``_part-imag_MEGRE`` (preferred) or ``_part-phase_MEGRE``;
  ``MagneticFieldStrength`` (T) is required.
* Vendor Dixon: ``<stem>_part-water_DIXON`` with ``<stem>_part-fat_DIXON``.

Outputs (``<stem>`` = input name without part entity and suffix) — ORMIR-MIDS ``mr-quant``
suffixes where they exist, BIDS ``desc-`` entities to keep the two fits apart, and a MyoVault
``RESIDUAL`` suffix for goodness of fit (ormir-mids has none):

* ``fit t2``: ``_T2`` (water T2, ms), ``_B1`` (relative), ``_desc-mese_FF`` (%),
  ``_desc-monoexp_T2`` (ms), ``_desc-t2fit_RESIDUAL`` (relative residual).
* ``fit dixon``: ``_FF`` (%), ``_WATER`` / ``_FAT`` (a.u.), ``_B0`` (Hz), ``_R2STAR`` (1/s,
  when fitted), ``_desc-dixon_RESIDUAL``; only ``_B0`` and the residual when the echo times
  cannot separate water from fat (``qmri/README.md``). The pipeline names the maps of a complex
  MEGRE ``_desc-megre_<SUFFIX>`` so they never collide with a vendor Dixon's ``_FF``.

Each map has a JSON sidecar with ``Method``, ``ModelParameters``, ``Units``, ``SoftwareName``,
``SoftwareVersion`` (``qmri.__version__``) and ``Sources``. Files are written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from qmri import __version__
from qmri.errors import InputDataError, MissingSidecarError, ShapeMismatchError, TooFewEchoesError

__all__ = [
    "MeseInput",
    "MegreInput",
    "VendorDixonInput",
    "sidecar_path",
    "read_sidecar",
    "read_mese",
    "read_megre",
    "read_vendor_dixon",
    "output_stem",
    "write_map",
    "voxel_size_mm",
]

SOFTWARE_NAME = "MyoVault qmri"


@dataclass(frozen=True)
class MeseInput:
    """Multi-echo spin echo: ``echoes`` shape (X, Y, Z, E), echo times (ms)."""

    echoes: NDArray[np.float32]
    echo_times_ms: NDArray[np.float64]
    affine: NDArray[np.float64]
    sidecar: dict[str, Any]
    sources: tuple[Path, ...]


@dataclass(frozen=True)
class MegreInput:
    """Multi-echo gradient echo: complex ``signal`` shape (X, Y, Z, E)."""

    signal: NDArray[np.complex64]
    echo_times_ms: NDArray[np.float64]
    field_strength_t: float
    affine: NDArray[np.float64]
    sidecar: dict[str, Any]
    sources: tuple[Path, ...]


@dataclass(frozen=True)
class VendorDixonInput:
    """Vendor-reconstructed water and fat magnitude images, shape (X, Y, Z)."""

    water: NDArray[np.float32]
    fat: NDArray[np.float32]
    affine: NDArray[np.float64]
    sidecar: dict[str, Any]
    sources: tuple[Path, ...]


def _split_name(path: Path) -> tuple[str, str]:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    raise InputDataError(f"{path} is not a NIfTI file (.nii or .nii.gz)")


def sidecar_path(nifti_path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar beside a NIfTI file (same stem)."""
    p = Path(nifti_path)
    stem, _ = _split_name(p)
    return p.with_name(stem + ".json")


def read_sidecar(nifti_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the sidecar of ``nifti_path``; :class:`MissingSidecarError` if absent or invalid."""
    sc = sidecar_path(nifti_path)
    if not sc.is_file():
        raise MissingSidecarError(
            f"JSON sidecar {sc.name} not found beside {Path(nifti_path).name}"
        )
    try:
        data = json.loads(sc.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MissingSidecarError(f"JSON sidecar {sc.name} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise MissingSidecarError(f"JSON sidecar {sc.name} is not a JSON object")
    return data


def _load(path: Path) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    if not path.is_file():
        raise InputDataError(f"{path} not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))  # type: ignore[attr-defined]
        affine = np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    except Exception as exc:  # nibabel raises several unrelated types for corrupt files
        raise InputDataError(f"{path.name} cannot be read as NIfTI: {exc}") from exc
    return data, affine


def _echo_times(sidecar: dict[str, Any], name: str) -> NDArray[np.float64]:
    if "EchoTime" not in sidecar:
        raise MissingSidecarError(f"sidecar of {name} has no EchoTime")
    te = np.atleast_1d(np.asarray(sidecar["EchoTime"], dtype=np.float64))
    if te.ndim != 1 or not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise InputDataError(f"EchoTime of {name} must be a list of positive numbers (ms)")
    if te.max() < 1.0:
        raise InputDataError(
            f"EchoTime of {name} looks like seconds ({te.tolist()}); ORMIR-MIDS stores ms"
        )
    return te


def _as_4d(data: NDArray[np.float32], n_echoes: int, name: str) -> NDArray[np.float32]:
    if data.ndim == 3 and n_echoes == 1:
        return data[..., None]
    if data.ndim == 2 and n_echoes > 1 and data.shape[-1] == n_echoes:
        return data[:, None, None, :]  # a single row of voxels
    if data.ndim != 4:
        raise ShapeMismatchError(f"{name} must be 4-D (x, y, z, echo); got shape {data.shape}")
    if data.shape[-1] != n_echoes:
        raise ShapeMismatchError(
            f"{name} has {data.shape[-1]} echoes but its sidecar lists {n_echoes} echo times"
        )
    return data


def read_mese(path: str | os.PathLike[str]) -> MeseInput:
    """Read a MESE NIfTI + sidecar; echoes shape (X, Y, Z, E), E >= 4 required."""
    p = Path(path)
    sidecar = read_sidecar(p)
    te = _echo_times(sidecar, p.name)
    if te.size < 4:
        raise TooFewEchoesError(f"{p.name}: water-T2 fitting needs >= 4 echoes, got {te.size}")
    data, affine = _load(p)
    return MeseInput(_as_4d(data, te.size, p.name), te, affine, sidecar, (p,))


def _companion(path: Path, part: str | None) -> Path:
    """The file naming ``path``'s acquisition with another ``part-`` entity (None: plain)."""
    stem, ext = _split_name(path)
    tokens = stem.split("_")
    suffix = tokens[-1]
    body = [t for t in tokens[:-1] if not t.startswith("part-")]
    if part is not None:
        body.append(f"part-{part}")
    return path.with_name("_".join(body + [suffix]) + ext)


def _part_of(path: Path) -> str | None:
    stem, _ = _split_name(path)
    for t in stem.split("_")[:-1]:
        if t.startswith("part-"):
            return t[len("part-") :]
    return None


def _phase_to_radians(
    phase: NDArray[np.float32],
    sidecar: dict[str, Any],
    phase_range: tuple[float, float] | None,
    name: str,
) -> NDArray[np.float64]:
    if phase_range is not None:
        lo, hi = phase_range
        if not hi > lo:
            raise InputDataError("phase_range must be increasing")
    else:
        finite = phase[np.isfinite(phase)]
        pmin, pmax = float(finite.min()), float(finite.max())
        manufacturer = str(sidecar.get("Manufacturer", "")).lower()
        if pmin >= -np.pi - 1e-3 and pmax <= np.pi + 1e-3:
            lo, hi = -np.pi, np.pi
        elif "siemens" in manufacturer and pmin >= 0 and pmax <= 4096:
            lo, hi = 0.0, 4096.0
        elif "siemens" in manufacturer and pmin >= -4096 and pmax <= 4096:
            lo, hi = -4096.0, 4096.0
        else:
            raise InputDataError(
                f"{name}: unknown phase scaling (values {pmin:g}..{pmax:g}, manufacturer "
                f"{manufacturer or 'unknown'}); give the stored range explicitly or supply "
                "real/imaginary parts"
            )
    return (phase.astype(np.float64) - lo) / (hi - lo) * 2.0 * np.pi - np.pi


def read_megre(
    path: str | os.PathLike[str], *, phase_range: tuple[float, float] | None = None
) -> MegreInput:
    """Read a complex MEGRE acquisition from its magnitude/real/imag/phase files.

    ``path`` may name any part; real + imaginary companions are preferred, else magnitude +
    phase. Phase scaling: radians if within [-pi, pi]; Siemens 12-bit (0..4095 or -4096..4095)
    by ``Manufacturer``; otherwise ``phase_range`` must be given (fails closed).
    """
    p = Path(path)
    real_p, imag_p = _companion(p, "real"), _companion(p, "imag")
    mag_candidates = [_companion(p, None), _companion(p, "mag")]
    phase_p = _companion(p, "phase")
    if real_p.is_file() and imag_p.is_file():
        sidecar = read_sidecar(real_p)
        te = _echo_times(sidecar, real_p.name)
        re_, affine = _load(real_p)
        im_, _ = _load(imag_p)
        read_sidecar(imag_p)
        re_, im_ = _as_4d(re_, te.size, real_p.name), _as_4d(im_, te.size, imag_p.name)
        if re_.shape != im_.shape:
            raise ShapeMismatchError(f"real {re_.shape} and imaginary {im_.shape} shapes differ")
        signal = (re_ + 1j * im_).astype(np.complex64)
        sources: tuple[Path, ...] = (real_p, imag_p)
    else:
        mag_p = next((c for c in mag_candidates if c.is_file()), None)
        if mag_p is None or not phase_p.is_file():
            raise InputDataError(
                f"{p.name}: complex Dixon needs _part-real + _part-imag or magnitude + "
                "_part-phase companions beside it"
            )
        sidecar = read_sidecar(mag_p)
        te = _echo_times(sidecar, mag_p.name)
        mag, affine = _load(mag_p)
        ph, _ = _load(phase_p)
        phase_sidecar = read_sidecar(phase_p)
        mag, ph = _as_4d(mag, te.size, mag_p.name), _as_4d(ph, te.size, phase_p.name)
        if mag.shape != ph.shape:
            raise ShapeMismatchError(f"magnitude {mag.shape} and phase {ph.shape} shapes differ")
        rad = _phase_to_radians(ph, phase_sidecar | sidecar, phase_range, phase_p.name)
        signal = (mag * np.exp(1j * rad)).astype(np.complex64)
        sources = (mag_p, phase_p)
    if te.size < 2:
        raise TooFewEchoesError(f"{p.name}: Dixon needs >= 2 echoes, got {te.size}")
    if "MagneticFieldStrength" not in sidecar:
        raise MissingSidecarError(f"sidecar of {sources[0].name} has no MagneticFieldStrength")
    field = float(sidecar["MagneticFieldStrength"])
    if field <= 0:
        raise InputDataError(f"MagneticFieldStrength must be > 0, got {field}")
    return MegreInput(signal, te, field, affine, sidecar, sources)


def read_vendor_dixon(path: str | os.PathLike[str]) -> VendorDixonInput:
    """Read ``_part-water_DIXON`` and ``_part-fat_DIXON`` (either may be given)."""
    p = Path(path)
    water_p, fat_p = _companion(p, "water"), _companion(p, "fat")
    for q in (water_p, fat_p):
        if not q.is_file():
            raise InputDataError(f"{q.name} not found beside {p.name}")
    sidecar = read_sidecar(water_p)
    read_sidecar(fat_p)
    w, affine = _load(water_p)
    f, _ = _load(fat_p)
    if w.shape != f.shape:
        raise ShapeMismatchError(f"water {w.shape} and fat {f.shape} shapes differ")
    return VendorDixonInput(w, f, affine, sidecar, (water_p, fat_p))


def is_vendor_dixon(path: str | os.PathLike[str]) -> bool:
    """True for ``_part-water_DIXON`` / ``_part-fat_DIXON`` file names."""
    p = Path(path)
    stem, _ = _split_name(p)
    return stem.split("_")[-1] == "DIXON" and _part_of(p) in {"water", "fat"}


def output_stem(path: str | os.PathLike[str]) -> str:
    """Input name without extension, ``part-`` entity and suffix (``sub-1_ses-1_MESE`` ->
    ``sub-1_ses-1``)."""
    stem, _ = _split_name(Path(path))
    tokens = stem.split("_")
    body = [t for t in tokens[:-1] if not t.startswith("part-")]
    return "_".join(body) if body else tokens[0]


def voxel_size_mm(affine: NDArray[np.float64]) -> NDArray[np.float64]:
    """Voxel edge lengths (mm) of the three spatial axes."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_map(
    out_dir: str | os.PathLike[str],
    stem: str,
    suffix: str,
    data: NDArray[Any],
    affine: NDArray[np.float64],
    *,
    units: str,
    method: str,
    parameters: dict[str, Any],
    sources: tuple[Path, ...] | list[Path],
    desc: str | None = None,
    description: str | None = None,
) -> Path:
    """Write ``<stem>[_desc-<desc>]_<suffix>.nii.gz`` (float32, NaN outside the fit) + sidecar.

    Returns the NIfTI path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = stem + (f"_desc-{desc}" if desc else "") + f"_{suffix}"
    nii = out / f"{name}.nii.gz"
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm")
    sidecar = {
        "Suffix": suffix,
        "Units": units,
        "Method": method,
        "ModelParameters": _jsonable(parameters),
        "SoftwareName": SOFTWARE_NAME,
        "SoftwareVersion": __version__,
        "Sources": [s.name for s in sources],
    }
    if description:
        sidecar["Description"] = description
    tmp_nii = out / f".{name}.partial-{os.getpid()}.nii.gz"
    try:
        nib.save(img, str(tmp_nii))
        os.replace(tmp_nii, nii)
    finally:
        if tmp_nii.exists():
            tmp_nii.unlink()
    _atomic_write(
        out / f"{name}.json",
        lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8"),
    )
    return nii


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
