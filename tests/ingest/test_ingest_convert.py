"""Plan + convert on synthetic de-identified studies: names, sidecars, tables, failures."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ingest_helpers import classic_image, save
from pydicom.uid import generate_uid

from ingest.convert import (
    bids_label,
    convert,
    output_stem,
    parse_age_years,
    plan_conversion,
)
from ingest.errors import ConversionError
from ingest.scan import IssueKind, scan_folder

IDENTIFYING_KEYS = {
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "AccessionNumber",
    "StudyDate",
}


def write_stack(
    folder: Path,
    *,
    patient_id: str = "PSEUDO01",
    study_uid: str,
    series_number: int,
    echo_times: list[float],
    n_slices: int = 2,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    scanning_sequence: str = "SE",
    **extra: object,
) -> str:
    series_uid = generate_uid()
    for k in range(n_slices):
        for e, te in enumerate(echo_times):
            pixels = np.full((3, 4), 100 * k + e, dtype=np.uint16)
            ds = classic_image(
                pixels,
                position=(0.0, 0.0, 5.0 * k),
                echo_time_ms=te,
                patient_id=patient_id,
                series_uid=series_uid,
                study_uid=study_uid,
                SeriesNumber=series_number,
                ImageType=list(image_type),
                ScanningSequence=scanning_sequence,
                RepetitionTime="2500",
                FlipAngle="90",
                **extra,
            )
            save(ds, folder / f"s{series_number}_{series_uid[-6:]}_{k}_{e}.dcm")
    return series_uid


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """Two participants; P-1 has two visits (second one 30 days later, with two MESE runs)."""
    src = tmp_path / "src"
    v1, v2, w1 = generate_uid(), generate_uid(), generate_uid()
    mese = [10.0, 20.0, 30.0]
    write_stack(
        src / "a",
        patient_id="P-1",
        study_uid=v1,
        series_number=3,
        echo_times=mese,
        StudyDate="20240110",
        PatientAge="040Y",
        PatientSex="F",
    )
    write_stack(
        src / "a",
        patient_id="P-1",
        study_uid=v1,
        series_number=4,
        echo_times=[2.0, 4.0],
        scanning_sequence="GR",
        image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
        StudyDate="20240110",
        PatientAge="040Y",
        PatientSex="F",
    )
    write_stack(
        src / "b",
        patient_id="P-1",
        study_uid=v2,
        series_number=5,
        echo_times=mese,
        StudyDate="20240209",
        PatientAge="040Y",
        PatientSex="F",
    )
    write_stack(
        src / "b",
        patient_id="P-1",
        study_uid=v2,
        series_number=7,
        echo_times=mese,
        StudyDate="20240209",
        PatientAge="040Y",
        PatientSex="F",
    )
    write_stack(
        src / "c",
        patient_id="P-2",
        study_uid=w1,
        series_number=2,
        echo_times=[1.5],
        scanning_sequence="GR",
        SeriesDescription="localizer",
        StudyDate="20230505",
        PatientAge="018M",
        PatientSex="M",
    )
    write_stack(
        src / "c",
        patient_id="P-2",
        study_uid=w1,
        series_number=9,
        echo_times=[12.0],
        image_type=("ORIGINAL", "PRIMARY", "W", "DIXON"),
        scanning_sequence="GR",
        StudyDate="20230505",
        PatientAge="018M",
        PatientSex="M",
    )
    (src / "c" / "README.txt").write_text("not dicom")
    return src


def test_cohort_converts_to_ormir_mids_tree(cohort: Path, tmp_path: Path) -> None:
    plan = plan_conversion(scan_folder(cohort))
    stems = sorted(f.relative_stem for f in plan.files)
    assert stems == [
        "sub-P1/ses-1/mr-anat/sub-P1_ses-1_MESE",
        "sub-P1/ses-1/mr-anat/sub-P1_ses-1_part-phase_MEGRE",
        "sub-P1/ses-2/mr-anat/sub-P1_ses-2_run-1_MESE",
        "sub-P1/ses-2/mr-anat/sub-P1_ses-2_run-2_MESE",
        "sub-P2/ses-1/mr-anat/sub-P2_ses-1_part-water_DIXON",
    ]
    skipped = {(n.kind, n.reason.split(":")[0]) for n in plan.not_converted}
    assert (IssueKind.SKIPPED, "localizer/scout images are not converted") in skipped
    assert any("README.txt" in n.what for n in plan.not_converted)

    out = tmp_path / "out"
    result = convert(plan, out)
    assert not result.failed
    assert len(result.files) == 5
    for converted in result.files:
        assert converted.nifti_path.exists() and converted.sidecar_path.exists()
        assert len(converted.sha256) == 64
    # nothing else: no patient sidecars, no partial files
    all_files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert not [p for p in all_files if "patient" in p or ".partial" in p]
    assert all(p.endswith((".nii.gz", ".json", ".tsv")) for p in all_files)

    mese = out / "sub-P1/ses-1/mr-anat/sub-P1_ses-1_MESE"
    image = nib.load(f"{mese}.nii.gz")
    assert image.shape == (4, 3, 2, 3)
    data = np.asanyarray(image.dataobj)
    assert data[0, 0, 1, 2] == 102  # slice 2 (k=1), echo 3 (e=2)
    sidecar = json.loads(Path(f"{mese}.json").read_text())
    assert sidecar["EchoTime"] == [10.0, 20.0, 30.0]
    assert sidecar["RepetitionTime"] == 2500.0
    assert sidecar["RefocusingFlipAngle"] == 90.0
    assert sidecar["MagneticFieldStrength"] == 3.0
    assert sidecar["Manufacturer"] == "SIEMENS"
    assert sidecar["PulseSequenceType"] == "Multi-echo Spin Echo"
    assert sidecar["MyoVault"]["Classification"] == "mese"
    for path in out.rglob("*.json"):
        text = path.read_text()
        assert not IDENTIFYING_KEYS & set(json.loads(text))
        assert "P-1" not in text and "P-2" not in text

    with (out / "participants.tsv").open() as fp:
        rows = list(csv.DictReader(fp, delimiter="\t"))
    assert rows == [
        {"participant_id": "sub-P1", "sex": "F"},
        {"participant_id": "sub-P2", "sex": "M"},
    ]
    with (out / "sub-P1" / "sub-P1_sessions.tsv").open() as fp:
        sessions = list(csv.DictReader(fp, delimiter="\t"))
    assert sessions == [
        {"session_id": "ses-1", "age": "40", "days_from_first_visit": "0"},
        {"session_id": "ses-2", "age": "40", "days_from_first_visit": "30"},
    ]
    with (out / "sub-P2" / "sub-P2_sessions.tsv").open() as fp:
        assert list(csv.DictReader(fp, delimiter="\t")) == [
            {"session_id": "ses-1", "age": "1.5", "days_from_first_visit": "0"}
        ]


def test_existing_outputs_are_not_overwritten(cohort: Path, tmp_path: Path) -> None:
    plan = plan_conversion(scan_folder(cohort))
    convert(plan, tmp_path / "out")
    again = convert(plan, tmp_path / "out")
    assert not again.files
    assert len(again.failed) == 5
    assert all("already exists" in f.reason for f in again.failed)
    assert len(convert(plan, tmp_path / "out", overwrite=True).files) == 5


def test_file_changed_after_scan_fails_that_file_only(cohort: Path, tmp_path: Path) -> None:
    plan = plan_conversion(scan_folder(cohort))
    victim = plan.files[0].geometry.records[0].path
    other = next(p for p in cohort.rglob("*.dcm") if p.parent != victim.parent)
    victim.write_bytes(other.read_bytes())
    result = convert(plan, tmp_path / "out")
    assert len(result.failed) == 1 and "changed since it was scanned" in result.failed[0].reason
    assert len(result.files) == 4
    assert not list((tmp_path / "out").rglob(".*partial*"))


def test_plan_refuses_duplicate_output_names(cohort: Path, tmp_path: Path) -> None:
    plan = plan_conversion(scan_folder(cohort))
    from dataclasses import replace

    broken = replace(plan, files=(plan.files[0], plan.files[0]))
    with pytest.raises(ConversionError, match="same output twice"):
        convert(broken, tmp_path / "out")


def test_patient_ids_that_collide_as_labels_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_stack(
        src, patient_id="AB-1", study_uid=generate_uid(), series_number=1, echo_times=[10, 20]
    )
    write_stack(
        src, patient_id="AB_1", study_uid=generate_uid(), series_number=1, echo_times=[10, 20]
    )
    plan = plan_conversion(scan_folder(src))
    assert not plan.files
    assert all("unique BIDS participant label" in n.reason for n in plan.not_converted)


def test_helpers() -> None:
    assert bids_label("AB-1_x") == "AB1x"
    assert parse_age_years("036Y") == 36.0
    assert parse_age_years("006M") == 0.5
    assert parse_age_years("18") is None
    assert parse_age_years(None) is None
    assert (
        output_stem("X", "2", "T2w", acq="stir", run=1, part=None)
        == "sub-X/ses-2/mr-anat/sub-X_ses-2_acq-stir_run-1_T2w"
    )


def test_rescale_is_applied_as_float(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_stack(
        src,
        study_uid=generate_uid(),
        series_number=1,
        echo_times=[10, 20],
        RescaleSlope="0.5",
        RescaleIntercept="-1",
    )
    result = convert(plan_conversion(scan_folder(src)), tmp_path / "out")
    data = np.asanyarray(nib.load(result.files[0].nifti_path).dataobj)
    assert data.dtype == np.float32
    np.testing.assert_allclose(data[0, 0, 1, :], [100 * 0.5 - 1, 101 * 0.5 - 1])


def test_separate_magnitude_and_phase_series_pair_without_runs(tmp_path: Path) -> None:
    """Siemens stores MEGRE magnitude and phase as two series: same acquisition, no run-<n>."""
    src, study = tmp_path / "src", generate_uid()
    for number, token in ((5, "M"), (6, "P"), (7, "M"), (8, "P")):
        write_stack(
            src,
            study_uid=study,
            series_number=number,
            echo_times=[2.0, 4.0],
            scanning_sequence="GR",
            image_type=("ORIGINAL", "PRIMARY", token, "ND"),
        )
    stems = sorted(
        f.relative_stem.rsplit("/", 1)[1] for f in plan_conversion(scan_folder(src)).files
    )
    assert stems == [
        "sub-PSEUDO01_ses-1_run-1_MEGRE",
        "sub-PSEUDO01_ses-1_run-1_part-phase_MEGRE",
        "sub-PSEUDO01_ses-1_run-2_MEGRE",
        "sub-PSEUDO01_ses-1_run-2_part-phase_MEGRE",
    ]
    single = tmp_path / "single"
    for number, token in ((5, "M"), (6, "P")):
        write_stack(
            single,
            study_uid=study,
            series_number=number,
            echo_times=[2.0, 4.0],
            scanning_sequence="GR",
            image_type=("ORIGINAL", "PRIMARY", token, "ND"),
        )
    stems = sorted(
        f.relative_stem.rsplit("/", 1)[1] for f in plan_conversion(scan_folder(single)).files
    )
    assert stems == ["sub-PSEUDO01_ses-1_MEGRE", "sub-PSEUDO01_ses-1_part-phase_MEGRE"]


def test_crash_while_writing_leaves_nothing_half_written(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the package re-exports the function ``convert``, so fetch the module itself
    convert_module = importlib.import_module("ingest.convert")
    real_save = convert_module.nib.save
    calls = []

    def exploding_save(image, filename):  # writes a partial file, then dies like a killed worker
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"\x1f\x8b partial")
            raise OSError("No space left on device")
        return real_save(image, filename)

    monkeypatch.setattr(convert_module.nib, "save", exploding_save)
    out = tmp_path / "out"
    result = convert(plan_conversion(scan_folder(cohort)), out)
    assert len(result.files) == 4
    (failure,) = result.failed
    assert "No space left on device" in failure.reason
    names = [p.name for p in out.rglob("*") if p.is_file()]
    assert not [n for n in names if "partial" in n]
    assert len([n for n in names if n.endswith(".nii.gz")]) == 4
    assert len([n for n in names if n.endswith(".json")]) == 4


def test_signed_and_unsigned_images_in_one_stack_do_not_wrap(tmp_path: Path) -> None:
    from ingest.nifti import assemble_volume, stack_geometry
    from ingest.records import records_from_dataset

    series_uid, study_uid = generate_uid(), generate_uid()
    records = []
    for k in range(2):
        ds = classic_image(
            np.zeros((2, 2)), position=(0, 0, 3.0 * k), series_uid=series_uid, study_uid=study_uid
        )
        records.extend(records_from_dataset(ds, tmp_path / f"{k}.dcm"))
    geometry = stack_geometry(records)
    arrays = {
        records[0].path: np.full((2, 2), -5, np.int16),
        records[1].path: np.full((2, 2), 60000, np.uint16),
    }
    volume = assemble_volume(geometry, lambda r: arrays[r.path])
    assert volume[0, 0, 0] == -5 and volume[0, 0, 1] == 60000


def test_signed_12_bit_pixels_fall_back_to_pydicom_sign_extension(tmp_path: Path) -> None:
    from ingest.convert import PixelReader, native_dtype

    ds = classic_image(
        np.zeros((2, 3)), position=(0, 0, 0), series_uid=generate_uid(), study_uid=generate_uid()
    )
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.PixelData = np.array([[0x0FFF, 0x0800, 1], [0x07FF, 0, 2]], dtype="<u2").tobytes()
    save(ds, tmp_path / "s.dcm")
    (record,) = scan_folder(tmp_path).series[0].instances
    assert native_dtype(record) is None
    np.testing.assert_array_equal(PixelReader()(record), [[-1, -2048, 1], [2047, 0, 2]])


def test_single_echo_anatomy_names_and_sidecars(tmp_path: Path) -> None:
    src, study = tmp_path / "src", generate_uid()
    specs = {
        "t1": {"ScanningSequence": "SE", "RepetitionTime": "600", "te": 12.0, "SeriesNumber": 2},
        "stir": {
            "ScanningSequence": ["SE", "IR"],
            "RepetitionTime": "4000",
            "InversionTime": "210",
            "te": 50.0,
            "SeriesNumber": 3,
        },
    }
    for name, spec in specs.items():
        spec = dict(spec)
        te = spec.pop("te")
        series_uid = generate_uid()
        for k in range(3):
            ds = classic_image(
                np.full((3, 4), k, dtype=np.uint16),
                position=(0, 0, 6.0 * k),
                echo_time_ms=te,
                series_uid=series_uid,
                study_uid=study,
                ImageType=["ORIGINAL", "PRIMARY", "M", "ND"],
                **spec,
            )
            save(ds, src / f"{name}{k}.dcm")
    result = convert(plan_conversion(scan_folder(src)), tmp_path / "out")
    names = {f.label: f for f in result.files}
    assert names["t1w"].nifti_path.name == "sub-PSEUDO01_ses-1_T1w.nii.gz"
    assert names["stir"].nifti_path.name == "sub-PSEUDO01_ses-1_acq-stir_T2w.nii.gz"
    assert names["t1w"].shape == (4, 3, 3)
    stir = json.loads(names["stir"].sidecar_path.read_text())
    assert stir["InversionTime"] == 210.0 and stir["EchoTime"] == 50.0
    assert stir["PulseSequenceType"] == "Short-tau inversion recovery"
