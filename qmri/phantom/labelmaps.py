"""Reading the real thigh label maps and grouping them by subject.

The 30 label maps of ``../shared/data/labels/thigh_11_muscles/`` are never copied into the
repository; the training code reads them from a directory given on the command line. Several
files are the same subject segmented on different contrasts (for example
``Training_Fat_THIGH_031_0000`` and ``Training_T1_THIGH_031_0002``), so the split into
train/validation/test is by *subject*, never by file or slice (see ``data/split.json``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from qmri.segmentation.errors import PhantomError
from qmri.segmentation.labels import MUSCLE_NAMES, N_MUSCLES

__all__ = [
    "MUSCLE_NAMES",
    "N_MUSCLES",
    "LabelMap",
    "subject_id",
    "load_label_map",
    "file_label_mapping",
    "check_anatomy",
    "load_split",
    "split_files",
]


_TRAINING = re.compile(r"^Training_[A-Za-z0-9]+_THIGH_(\d+)_\d+$")
_HELSINKI = re.compile(r"^Helsinki_[A-Za-z0-9]+_THIGH_(\d+)_\d+$")
_TUM = re.compile(r"^MyoSegmenTUM_[A-Za-z]+_(HV\d+)_\d+_\d+$")


@dataclass(frozen=True)
class LabelMap:
    """One real label map on RAS axes, muscles numbered in the README order.

    Attributes
    ----------
    name : str
        File name without ``.nii.gz``.
    subject : str
        Subject identifier shared by files of the same person.
    labels : ndarray of uint8, shape (x, y, z)
        Muscle labels 0..11 (:data:`MUSCLE_NAMES` order); axes R (axis 0 increases towards
        the subject's right), A, S.
    spacing_mm : tuple of float
        Voxel size along (x, y, z) in millimetres.
    """

    name: str
    subject: str
    labels: NDArray[np.uint8]
    spacing_mm: tuple[float, float, float]


def subject_id(name: str) -> str:
    """Return the subject identifier of a label-map file name (without extension).

    Raises
    ------
    PhantomError
        If the name follows none of the known patterns (fail closed: an unknown file could
        otherwise leak a test subject into training).
    """
    stem = name.removesuffix(".nii.gz").removesuffix(".nii")
    for pattern, prefix in ((_TRAINING, "THIGH_"), (_HELSINKI, "Helsinki_"), (_TUM, "TUM_")):
        match = pattern.match(stem)
        if match:
            return prefix + match.group(1)
    raise PhantomError(f"label map name {stem!r} matches no known subject pattern")


def file_label_mapping() -> NDArray[np.uint8]:
    """Lookup table ``file value -> muscle index`` from ``data/label_mapping.json``.

    The label maps do not number the muscles in the README's order (see the JSON's comment);
    the table is complete over 0..11 and a bijection, or this raises :class:`PhantomError`.
    """
    text = resources.files("qmri.phantom").joinpath("data/label_mapping.json").read_text("utf-8")
    data = json.loads(text)
    if data.get("version") != 1:
        raise PhantomError("label_mapping.json: unknown version")
    table = np.zeros(N_MUSCLES + 1, dtype=np.uint8)
    mapping = {int(k): int(v) for k, v in data["file_to_muscle"].items()}
    if sorted(mapping) != list(range(1, N_MUSCLES + 1)) or sorted(mapping.values()) != list(
        range(1, N_MUSCLES + 1)
    ):
        raise PhantomError("label_mapping.json must map 1..11 one-to-one onto 1..11")
    for k, v in mapping.items():
        table[k] = v
    return table


def check_anatomy(labels: NDArray[np.uint8], name: str = "label map") -> None:
    """Fail unless the quadriceps lie anterior of the hamstrings on RAS axes (+y anterior).

    Guards both the orientation read from the header and the label mapping.

    Parameters
    ----------
    labels : ndarray of uint8, shape (x, y, z)
        Muscle labels in the README order, RAS axes.
    """
    quad = np.isin(labels, (6, 7, 8, 9))
    ham = np.isin(labels, (1, 3, 4))
    if not (quad.any() and ham.any()):
        raise PhantomError(f"{name}: quadriceps or hamstrings missing; cannot check anatomy")
    y = np.arange(labels.shape[1])[None, :, None]
    y_quad = float((quad * y).sum() / quad.sum())
    y_ham = float((ham * y).sum() / ham.sum())
    if y_quad <= y_ham:
        raise PhantomError(
            f"{name}: quadriceps are not anterior of the hamstrings after RAS reorientation; "
            "header orientation or label mapping is wrong"
        )


def load_label_map(path: Path) -> LabelMap:
    """Load a real label NIfTI: reorient to RAS, renumber to the README order, check anatomy."""
    image = nib.as_closest_canonical(nib.load(str(path)))  # type: ignore[attr-defined]
    labels = np.asarray(image.dataobj)
    if labels.ndim != 3:
        raise PhantomError(f"{path.name}: expected a 3D label map, got shape {labels.shape}")
    values = np.unique(labels)
    if values.min() < 0 or values.max() > N_MUSCLES or not np.allclose(values, np.round(values)):
        raise PhantomError(f"{path.name}: label values {values.tolist()} outside 0..{N_MUSCLES}")
    muscles = file_label_mapping()[labels.astype(np.intp)]
    check_anatomy(muscles, path.name)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    name = path.name.removesuffix(".nii.gz").removesuffix(".nii")
    return LabelMap(
        name=name,
        subject=subject_id(name),
        labels=np.ascontiguousarray(muscles),
        spacing_mm=(zooms[0], zooms[1], zooms[2]),
    )


def load_split() -> dict[str, list[str]]:
    """The fixed subject split shipped in ``data/split.json`` ({"train"|"val"|"test": ids})."""
    text = resources.files("qmri.phantom").joinpath("data/split.json").read_text("utf-8")
    split = json.loads(text)
    subjects = {key: list(split[key]) for key in ("train", "val", "test")}
    seen: set[str] = set()
    for ids in subjects.values():
        overlap = seen.intersection(ids)
        if overlap:
            raise PhantomError(f"split.json lists subjects in two parts: {sorted(overlap)}")
        seen.update(ids)
    return subjects


def split_files(labels_dir: Path) -> dict[str, list[Path]]:
    """Assign every label file in ``labels_dir`` to its part of the subject split.

    Raises
    ------
    PhantomError
        If the directory holds no label maps or a file's subject is not in the split.
    """
    split = load_split()
    part_of = {sid: part for part, ids in split.items() for sid in ids}
    files = sorted(Path(labels_dir).glob("*.nii.gz"))
    if not files:
        raise PhantomError(f"no *.nii.gz label maps in {labels_dir}")
    out: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for path in files:
        sid = subject_id(path.name)
        if sid not in part_of:
            raise PhantomError(f"{path.name}: subject {sid} is not in split.json")
        out[part_of[sid]].append(path)
    return out
