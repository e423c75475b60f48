"""Table-driven test: one planted unique value per PS3.15 Table E.1-1 attribute.

Every attribute of the pinned 2026c table is planted with a value no other attribute has. After
de-identification a planted value may only survive where a claimed option keeps it (Retain
Patient Characteristics ``K``, times under Retain Longitudinal Temporal Information with
Modified Dates, descriptors retained after cleaning); dates must come out shifted by the
subject's offset; nothing planted may appear anywhere else in the encoded output.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from anon_factory import SECRET, mr_dataset
from click.testing import CliRunner
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from anonymizer import Action, Deidentifier, load_profile
from anonymizer.profile_build import TABLE_2026C, _vr, parse_dicomfields
from repository.cli.anonymize import anonymize

TABLE = parse_dicomfields(TABLE_2026C)
EXACT = {int(k, 16): name for k, (_, name) in TABLE.items() if "X" not in k}
BASE = dt.date(1990, 1, 1)
# attributes the synthetic MR image needs to stay a valid object are planted too (their
# planted values replace the factory's); the file meta group is not a dataset attribute
SKIP = {0x00080016}  # SOP Class UID is not in the table; listed for clarity only


def _planted(tag: int, name: str, index: int) -> DataElement | None:
    vr = _vr(f"{tag:08X}", name)
    token = f"PLANT{index:04d}"
    if vr == "SQ":
        item = Dataset()
        item.PatientName = f"Seqplant{index:04d}^Inner"
        item.CodeMeaning = f"{token}SEQ"
        return DataElement(tag, "SQ", Sequence([item]))
    values: dict[str, object] = {
        "PN": f"Plant{index:04d}^Person",
        "LO": f"{token}LO",
        "SH": f"{token}SH",
        "LT": f"{token} long text",
        "ST": f"{token} short text",
        "UT": f"{token} unlimited text",
        "UC": f"{token}UC",
        "CS": f"{token}CS",
        "AE": f"{token}AE",
        "UR": f"http://{token.lower()}.example.org",
        "DA": (BASE + dt.timedelta(days=index)).strftime("%Y%m%d"),
        "DT": (BASE + dt.timedelta(days=index)).strftime("%Y%m%d") + "101010",
        "TM": f"{index % 24:02d}{index % 60:02d}{(index * 7) % 60:02d}",
        "UI": f"1.2.826.0.1.3680043.99.7.{index}",
        "IS": str(700000 + index),
        "DS": f"{700000 + index}.5",
        "AS": f"{index % 100:03d}Y",
        "US": index,
        "SS": index,
        "UL": 700000 + index,
        "SL": 700000 + index,
        "FL": 700000.25 + index,
        "FD": 700000.25 + index,
        "OB": f"{token}OB".encode(),
        "OW": f"{token}OW".encode(),
        "UN": f"{token}UN".encode(),
        "AT": 0x00100010,
    }
    if vr not in values:
        return None
    return DataElement(tag, vr, values[vr])


def _planted_dataset() -> tuple[Dataset, dict[int, DataElement]]:
    ds = mr_dataset()
    planted: dict[int, DataElement] = {}
    for index, (tag, name) in enumerate(sorted(EXACT.items())):
        if tag >> 16 in (0x0002, 0x7FE0) or tag in SKIP:
            continue
        elem = _planted(tag, name, index)
        if elem is not None:
            ds[tag] = elem
            planted[tag] = copy.deepcopy(elem)
    ds.SOPInstanceUID = str(planted[0x00080018].value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, planted


@pytest.fixture(scope="module")
def outcome() -> tuple[Dataset, dict[int, DataElement], Dataset, bytes, int]:
    ds, planted = _planted_dataset()
    pixel = bytes(ds.PixelData)
    deid = Deidentifier(SECRET, "P1", "S1")
    patient_id = str(ds.PatientID)
    result = deid.deidentify_dataset(ds)
    assert result.status == "written", (result.reason, result.detail, result.findings[:5])
    assert result.dataset is not None and result.encoded is not None
    assert result.dataset.PixelData == pixel
    return ds, planted, result.dataset, result.encoded, deid.pseudo.date_shift_days(patient_id)


def test_every_table_attribute_is_planted() -> None:
    ds, planted = _planted_dataset()
    assert len(EXACT) >= 600
    missing = set(EXACT) - set(planted) - {t for t in EXACT if t >> 16 in (0x0002, 0x7FE0)}
    assert not missing


def test_no_planted_value_survives_unless_an_option_keeps_it(
    outcome: tuple[Dataset, dict[int, DataElement], Dataset, bytes, int],
) -> None:
    _, planted, out, encoded, shift = outcome
    profile = load_profile()
    text = encoded.decode("latin-1").lower()
    kept_by_option = []
    for tag, elem in planted.items():
        action = profile.action_for(tag)
        got = out.get(tag)
        value = None if got is None else got.value
        if action is Action.KEEP:
            kept_by_option.append(tag)
            assert value == elem.value or str(value) == str(elem.value), hex(tag)
            continue
        if action is Action.DATE_SHIFT:
            original = dt.datetime.strptime(str(elem.value)[:8], "%Y%m%d").date()
            expected = (original + dt.timedelta(days=shift)).strftime("%Y%m%d")
            assert str(value)[:8] == expected, hex(tag)
            continue
        if action is Action.CLEAN_TEXT:
            kept_by_option.append(tag)
            continue
        if action is Action.PSEUDONYM:
            assert str(value).startswith("MV")
            continue
        if elem.VR == "SQ":
            assert value is None or len(value) == 0 or "seqplant" not in text, hex(tag)
            continue
        if elem.VR in ("UI",):
            assert value is None or str(elem.value) not in str(value), hex(tag)
            continue
        if elem.VR in ("US", "SS", "UL", "SL", "FL", "FD", "AT"):
            assert value in (None, 0, 0.0, b"") or value != elem.value, hex(tag)
            continue
        token = str(elem.value if not isinstance(elem.value, bytes) else elem.value.decode())
        assert token.lower() not in text, f"{hex(tag)} {EXACT[tag]} survived"
    # what the claimed options keep: patient characteristics, times, cleaned descriptors
    names = sorted(EXACT[t] for t in kept_by_option)
    assert "Patient's Age" in names and "Patient's Sex" in names
    assert "Patient's Name" not in names and "Institution Name" not in names
    assert len(kept_by_option) < 90


def test_planted_text_tokens_never_leak_elsewhere(
    outcome: tuple[Dataset, dict[int, DataElement], Dataset, bytes, int],
) -> None:
    _, planted, out, encoded, _ = outcome
    profile = load_profile()
    text = encoded.decode("latin-1").lower()
    # KEEP / cleaned descriptors keep their value; sequences kept and cleaned recursively
    # (X/Z/U*) keep the coded entries of their items (Code Meaning is on the keep-list) while
    # the person name planted in the same item must be gone
    keeping = (Action.KEEP, Action.CLEAN_TEXT, Action.CLEAN_SEQUENCE)
    allowed = {
        f"plant{i:04d}"
        for i, tag in enumerate(sorted(EXACT))
        if tag in planted and profile.action_for(tag) in keeping
    }
    found = {text[m : m + 9] for m in _find_all(text, "plant")}
    leaked = {t for t in found if t[5:9].isdigit()} - allowed
    assert not leaked
    assert "seqplant" not in text and "doe^jane" not in text


def _find_all(text: str, needle: str) -> list[int]:
    out, start = [], text.find(needle)
    while start != -1:
        out.append(start)
        start = text.find(needle, start + 1)
    return out


def test_research_attributes_and_pixels_intact(
    outcome: tuple[Dataset, dict[int, DataElement], Dataset, bytes, int],
) -> None:
    _, _, out, _, _ = outcome
    assert out.EchoTime == 10.9 and out.RepetitionTime == 1800
    assert out.FlipAngle == 180 and out.MagneticFieldStrength == 3
    assert out.Manufacturer == "SIEMENS" and out.ManufacturerModelName == "Skyra"
    assert [float(v) for v in out.PixelSpacing] == [1.5, 1.5]
    assert float(out.RescaleSlope) == 1.25
    assert out.PatientIdentityRemoved == "YES"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert np.frombuffer(out.PixelData, dtype="<u2").shape == (256,)


def test_cli_on_the_planted_file_writes_valid_marked_dicom(tmp_path: Path) -> None:
    ds, planted = _planted_dataset()
    for tag in [t for t in planted if t >> 16 == 0]:  # command group cannot go in a file
        del ds[tag]
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "planted.dcm", enforce_file_format=True)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    args = [str(tmp_path / "in"), str(tmp_path / "out"), "--secret-file", str(secret)]
    result = CliRunner().invoke(anonymize, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    (path,) = list((tmp_path / "out").rglob("*.dcm"))
    out = dcmread(path)
    assert out.PatientIdentityRemoved == "YES"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    text = path.read_bytes().decode("latin-1").lower()
    assert "seqplant" not in text
    survivors = {text[i : i + 9] for i in _find_all(text, "plant")}
    profile = load_profile()
    keeping = (Action.KEEP, Action.CLEAN_TEXT, Action.CLEAN_SEQUENCE)
    allowed = {
        f"plant{i:04d}"
        for i, tag in enumerate(sorted(EXACT))
        if tag in planted and profile.action_for(tag) in keeping
    }
    assert {s for s in survivors if s[5:9].isdigit()} <= allowed
