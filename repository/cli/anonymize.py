"""``myovault anonymize SRC_DIR DST_DIR``: de-identify a folder of DICOM files.

Secret: ``--secret-file`` (raw bytes, trailing newline stripped) or the environment variable
``MYOVAULT_PROJECT_SECRET``. Without either, a random secret is made for this run only and
never stored: the output is just as de-identified, but its pseudonyms, UIDs and date shifts
will not match those of any other run (re-uploads of a participant will not link up).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from anonymizer import AnonymizerError, JobConfig, anonymize_directory, random_secret

SECRET_ENV = "MYOVAULT_PROJECT_SECRET"  # noqa: S105 - a variable name, not a secret


def _read_secret(secret_file: Path | None) -> tuple[bytes, str]:
    if secret_file is not None:
        try:
            data = secret_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise click.ClickException(f"cannot read secret file: {exc.strerror}") from exc
        return data, f"secret file {secret_file.name}"
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode("utf-8"), f"${SECRET_ENV}"
    return random_secret(), ""


@click.command("anonymize")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dst_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--project", default="default", show_default=True, help="Project identifier.")
@click.option("--site", default="", help="Site identifier (part of the subject key).")
@click.option(
    "--secret-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Per-project secret (else ${SECRET_ENV}, else a one-off random secret).",
)
@click.option("--uid-root", default=None, help="Organisation UID root (default 2.25.<uuid>).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Worker processes.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON report here (default DST_DIR/anonymization-report.json).",
)
def anonymize(
    src_dir: Path,
    dst_dir: Path,
    project: str,
    site: str,
    secret_file: Path | None,
    uid_root: str | None,
    workers: int | None,
    report_path: Path | None,
) -> None:
    """De-identify every DICOM file under SRC_DIR into DST_DIR.

    Exits 0 only if every DICOM file was written safely; otherwise lists each file kept in
    quarantine with its reason and exits 1. Non-DICOM files are reported, never copied.
    """
    secret, origin = _read_secret(secret_file)
    if not origin:
        click.echo(
            f"warning: no project secret (--secret-file or ${SECRET_ENV}); using a one-off "
            "random secret: pseudonyms and UIDs will not link with any other run",
            err=True,
        )
    try:
        config = JobConfig(secret, project, site, uid_root)
        report = anonymize_directory(src_dir, dst_dir, config, workers=workers)
    except AnonymizerError as exc:
        raise click.ClickException(str(exc)) from exc
    target = report_path or dst_dir / "anonymization-report.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report.to_json() + "\n", encoding="utf-8")
    click.echo(report.summary())
    click.echo(f"report: {target}")
    if not report.safe:
        click.echo("NOT written (kept in quarantine):", err=True)
        for source, entry in zip(report.quarantined_sources, report.quarantined, strict=True):
            detail = f" ({entry['detail']})" if entry["detail"] else ""
            click.echo(f"  {source}: {entry['reason']}{detail} [{entry['file_ref']}]", err=True)
        sys.exit(1)
