"""``myovault segment`` and ``myovault train-segmentation`` (thin: parse, call qmri, print)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import click
import nibabel as nib
import numpy as np

__all__ = ["segment", "segment_corrections", "train_segmentation"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar_path(labels_path: Path) -> Path:
    name = labels_path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return labels_path.with_name(name[: -len(suffix)] + ".json")
    raise click.BadParameter("output must end in .nii or .nii.gz", param_hint="-o")


def _load_nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise click.UsageError(f"{path} is not a NIfTI image")
    return image  # type: ignore[return-value]


def _map_on_grid(path: Path | None, like: nib.Nifti1Image, what: str) -> np.ndarray | None:
    if path is None:
        return None
    image = _load_nifti(path)
    if image.shape[:3] != like.shape[:3] or not np.allclose(image.affine, like.affine, atol=1e-3):
        raise click.UsageError(f"{what} map {path} is not on the image's grid")
    data = np.asarray(image.dataobj, dtype=np.float64)
    return data if data.ndim == 3 else data[..., 0]


@click.command("segment")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Label NIfTI to write (…_dseg.nii.gz); a JSON sidecar is written beside it.",
)
@click.option("--model", "model_name", default=None, help="Model name (default per anatomy).")
@click.option("--anatomy", default="thigh", show_default=True)
@click.option(
    "--models-dir",
    "models_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MYOVAULT_SEGMENTATION_MODELS_DIR",
    help="Extra model registry roots (admin-installed models), after the shipped ones.",
)
@click.option("--volume-index", default=0, show_default=True, help="Volume of a 4D input.")
@click.option(
    "--ff", "ff_path", type=click.Path(exists=True, path_type=Path), help="FF map (%) for metrics."
)
@click.option(
    "--t2", "t2_path", type=click.Path(exists=True, path_type=Path), help="Water T2 map (ms)."
)
@click.option("--erosion", default=1, show_default=True, help="In-plane erosion for metrics.")
def segment(
    image: Path,
    output: Path,
    model_name: str | None,
    anatomy: str,
    models_dirs: tuple[Path, ...],
    volume_index: int,
    ff_path: Path | None,
    t2_path: Path | None,
    erosion: int,
) -> None:
    """Segment the thigh muscles (left and right) of IMAGE into a label NIfTI."""
    from qmri.metrics import compute_muscle_metrics, qc_flags, write_metrics_tsv
    from qmri.segmentation import SegmentationError, load_model, segment_nifti

    sidecar_path = _sidecar_path(output)
    start = time.monotonic()
    try:
        model = load_model(model_name, anatomy=anatomy, extra_roots=models_dirs)
        source = _load_nifti(image)
        labels_img, result = segment_nifti(source, model, volume_index=volume_index)
    except SegmentationError as exc:
        raise click.ClickException(str(exc)) from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    nib.save(labels_img, str(output))
    info = model.info
    sidecar: dict[str, Any] = result.sidecar()
    sidecar["Model"] |= {
        "Anatomy": info.anatomy,
        "Format": info.format,
        "WeightsSha256": info.weights_sha256(),
    }
    sidecar["Input"] = {
        "Path": str(image),
        "Sha256": _sha256(image),
        "VolumeIndex": volume_index,
    }
    sidecar["GeneratedBy"] = [{"Name": "myovault segment", "Version": _version()}]
    version_tag = f"{info.name}@{info.version}"
    ff = _map_on_grid(ff_path, source, "FF")
    t2 = _map_on_grid(t2_path, source, "T2")
    spacing = tuple(float(z) for z in source.header.get_zooms()[:3])
    labels = np.asarray(labels_img.dataobj)
    rows = compute_muscle_metrics(
        labels,
        spacing,
        ff_percent=ff,
        t2_water_ms=t2,
        erosion_voxels=erosion,
        model_version=version_tag,
        proximal_is_high_index=_superior_is_high(source, labels.shape),
    )
    flags = qc_flags(rows, confidence=result.confidence)
    sidecar["QualityControl"] = [dataclasses.asdict(f) for f in flags]
    if ff is not None or t2 is not None:
        tsv = output.with_name(sidecar_path.stem + "_metrics.tsv")
        write_metrics_tsv(rows, tsv)
        sidecar["Metrics"] = tsv.name
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n", "utf-8")
    elapsed = time.monotonic() - start
    click.echo(
        f"{output}: {len(result.confidence)} labels, model {version_tag}, "
        f"sides {result.sides.mode}, {len(flags)} QC flag(s), {elapsed:.1f} s"
    )


def _superior_is_high(image: nib.Nifti1Image, shape: tuple[int, ...]) -> bool:
    """Whether the last stored axis runs inferior -> superior (for the FF profile order)."""
    codes = nib.aff2axcodes(image.affine)
    return codes[2] == "S" if len(shape) >= 3 else True


def _version() -> str:
    try:
        from qmri import __version__
    except ImportError:  # pragma: no cover - qmri always has a version
        return "unknown"
    return str(__version__)


@click.command("train-segmentation")
@click.option(
    "--labels-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Real thigh label maps, e.g. ../shared/data/labels/thigh_11_muscles.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Model directory to write (manifest.json + weights.pt).",
)
@click.option("--seed", type=int, default=None, help="Random seed (default: the shipped one).")
@click.option("--rounds", type=int, default=None, help="Data rounds (default: shipped).")
@click.option("--steps-per-round", type=int, default=None, help="Steps per round.")
@click.option("--name", default="thigh-unet-v1", show_default=True)
@click.option("--model-version", default=None, help="Version (default: the shipped one).")
@click.option(
    "--corrections-dir",
    "corrections_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="User-corrected cases (`myovault segment-corrections export`) added to training.",
)
def train_segmentation(
    labels_dir: Path,
    out_dir: Path,
    seed: int | None,
    rounds: int | None,
    steps_per_round: int | None,
    name: str,
    model_version: str | None,
    corrections_dirs: tuple[Path, ...],
) -> None:
    """Train the thigh U-Net on synthetic phantoms made from real label maps (CPU, seeded)."""
    from qmri.segmentation import SegmentationError
    from qmri.segmentation.train import MODEL_VERSION, TrainConfig, train_from_labels_dir

    default = TrainConfig()
    config = dataclasses.replace(
        default,
        seed=default.seed if seed is None else seed,
        rounds=default.rounds if rounds is None else rounds,
        steps_per_round=default.steps_per_round if steps_per_round is None else steps_per_round,
    )
    if out_dir.name != name:
        raise click.BadParameter(
            f"the directory name must equal --name ({name})", param_hint="--out"
        )
    try:
        path = train_from_labels_dir(
            labels_dir,
            out_dir,
            config=config,
            name=name,
            version=model_version or MODEL_VERSION,
            log=click.echo,
            corrections_dirs=corrections_dirs,
        )
    except SegmentationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")


@click.group("segment-corrections")
def segment_corrections() -> None:
    """Corrected segmentations collected for fine-tuning the model."""


@segment_corrections.command("list")
@click.option("--project", "project_slug", default=None, help="Only this project (slug).")
def list_corrections(project_slug: str | None) -> None:
    """List the corrected cases that may be used for training (consent current, not erased)."""
    from repository.cli import _app
    from repository.errors import MyoVaultError
    from repository.services.labels import corrected_cases

    with _app() as app, app.extensions["myovault"].db.transaction() as session:
        try:
            cases = corrected_cases(session, project_slug=project_slug)
        except MyoVaultError as exc:
            raise click.ClickException(exc.message) from exc
        for case in cases:
            click.echo(
                f"case {case.id}: labels v{case.version} (derivative {case.labels_derivative_id})"
                f" from v{case.previous_version}, {case.voxels_changed} voxels changed,"
                f" base model {case.base_model_version or '?'}, by user {case.created_by_id}"
                f" at {case.created_at:%Y-%m-%d %H:%M} UTC"
            )
        click.echo(f"{len(cases)} corrected case(s)")


@segment_corrections.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--project", "project_slug", default=None, help="Only this project (slug).")
def export_corrections(out_dir: Path, project_slug: str | None) -> None:
    """Write corrected cases (image + labels NIfTI + provenance JSON) into OUT_DIR.

    OUT_DIR is what `myovault train-segmentation --corrections-dir OUT_DIR` reads. Only subjects
    with a current consent who were not erased are exported; the export is audited.
    """
    from repository.cli import _app
    from repository.errors import MyoVaultError
    from repository.services import audit
    from repository.services.context import SYSTEM
    from repository.services.labels import export_corrections as export

    with _app() as app:
        ext = app.extensions["myovault"]
        with ext.db.transaction() as session:
            try:
                records = export(session, ext.store, out_dir, project_slug=project_slug)
            except MyoVaultError as exc:
                raise click.ClickException(exc.message) from exc
            audit.record(
                session,
                SYSTEM,
                "labels.export_corrections",
                object_type="corrected_cases",
                details={
                    "cases": [r["case_id"] for r in records],
                    "project": project_slug,
                    "out_dir": str(out_dir),
                },
            )
    click.echo(f"exported {len(records)} corrected case(s) to {out_dir}")
