"""``myovault convert SRC_DIR DST_DIR``: de-identified DICOM → ORMIR-MIDS tree."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ingest.convert import convert as run_conversion
from ingest.convert import plan_conversion
from ingest.errors import IngestError
from ingest.scan import IssueKind, scan_folder


@click.command("convert")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dst_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace output files that already exist.")
def convert(src_dir: Path, dst_dir: Path, overwrite: bool) -> None:
    """Convert the de-identified DICOM under SRC_DIR into an ORMIR-MIDS tree in DST_DIR.

    Only files marked PatientIdentityRemoved=YES are accepted. Exits 1 and lists every file or
    series that could not be converted, with the reason; skipped inputs (non-DICOM files,
    non-MR objects, localizers) are listed but do not fail the command.
    """
    if dst_dir.resolve().is_relative_to(src_dir.resolve()):
        raise click.UsageError("DST_DIR must not be inside SRC_DIR")
    try:
        scan = scan_folder(src_dir)
        plan = plan_conversion(scan)
        result = run_conversion(plan, dst_dir, overwrite=overwrite)
    except IngestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    problems = [*plan.not_converted, *result.failed]
    refused = [p for p in problems if p.kind is IssueKind.REFUSED]
    skipped = [p for p in problems if p.kind is IssueKind.SKIPPED]
    for converted in result.files:
        rel = converted.nifti_path.relative_to(dst_dir)
        shape = "×".join(map(str, converted.shape))
        click.echo(f"converted  {rel}  [{converted.label}/{converted.part}, {shape}]")
    for item in skipped:
        click.echo(f"skipped    {item.what}: {item.reason}")
    for item in refused:
        click.echo(f"NOT CONVERTED  {item.what}: {item.reason}", err=True)
    images = sum(f.n_images for f in result.files)
    subjects = len({f.participant_id for f in result.files})
    sessions = len({(f.participant_id, f.session_id) for f in result.files})
    click.echo(
        f"summary: {len(result.files)} file(s) from {images} image(s), {subjects} participant(s), "
        f"{sessions} session(s); {len(skipped)} skipped; {len(refused)} not converted"
    )
    if refused:
        sys.exit(1)
