"""Table-driven classification: tiny synthetic headers per vendor, classic and enhanced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_helpers import classic_image, enhanced_image
from pydicom.uid import generate_uid

from ingest.classify import (
    RULES_DIR,
    classify_series,
    image_part,
    load_rule_table,
    parse_rule_table,
)
from ingest.errors import RuleTableError
from ingest.records import SeriesRecord, records_from_dataset

GE_PARM = (0x0043, 0x0010)
GE_PART = (0x0043, 0x102F)


def series(images: list[dict[str, Any]], **common: Any) -> SeriesRecord:
    """One series; each dict overrides header attributes of one image (z, te are shortcuts)."""
    series_uid, study_uid = generate_uid(), generate_uid()
    records = []
    for n, spec in enumerate(images):
        spec = {**common, **spec}
        ge_part = spec.pop("ge_part", None)
        ds = classic_image(
            np.zeros((2, 2)),
            position=(0, 0, float(spec.pop("z", 0))),
            echo_time_ms=spec.pop("te", 10.0),
            series_uid=series_uid,
            study_uid=study_uid,
            **spec,
        )
        if ge_part is not None:
            ds.add_new(GE_PARM, "LO", "GEMS_PARM_01")
            ds.add_new(GE_PART, "SS", ge_part)
        records.extend(records_from_dataset(ds, Path(f"{n}.dcm")))
    return SeriesRecord(series_uid, tuple(records))


def echoes(tes: list[float], **kw: Any) -> list[dict[str, Any]]:
    return [{"te": te, **kw} for te in tes]


SIEMENS = {"Manufacturer": "SIEMENS"}
PHILIPS = {"Manufacturer": "Philips Medical Systems"}
GE = {"Manufacturer": "GE MEDICAL SYSTEMS"}
GRE = {"ScanningSequence": "GR", "RepetitionTime": "20"}
SE = {"ScanningSequence": "SE", "RepetitionTime": "3000"}


@pytest.mark.parametrize(
    ("images", "common", "label", "parts"),
    [
        # Siemens Dixon: one series per image type
        (
            [{"ImageType": ["DERIVED", "PRIMARY", "DIXON", "WATER"]}],
            {**SIEMENS, **GRE},
            "dixon",
            {"water"},
        ),
        (
            [{"ImageType": ["DERIVED", "PRIMARY", "DIXON", "FAT"]}],
            {**SIEMENS, **GRE},
            "dixon",
            {"fat"},
        ),
        (
            [{"ImageType": ["ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE"]}],
            {**SIEMENS, **GRE},
            "dixon",
            {"in_phase"},
        ),
        (
            [{"ImageType": ["ORIGINAL", "PRIMARY", "DIXON", "OPP_PHASE"]}],
            {**SIEMENS, **GRE},
            "dixon",
            {"opposed_phase"},
        ),
        # Philips mDIXON: all four types in one series
        (
            [
                {"ImageType": ["DERIVED", "PRIMARY", "W", "W", "DIXON"]},
                {"ImageType": ["DERIVED", "PRIMARY", "F", "F", "DIXON"]},
                {"ImageType": ["ORIGINAL", "PRIMARY", "IP", "IP", "DIXON"], "te": 2.3},
                {"ImageType": ["ORIGINAL", "PRIMARY", "OP", "OP", "DIXON"], "te": 1.15},
            ],
            {**PHILIPS, **GRE},
            "dixon",
            {"water", "fat", "in_phase", "opposed_phase"},
        ),
        # GE IDEAL: part in the series description
        (
            [
                {
                    "SeriesDescription": "WATER: Ax IDEAL",
                    "ImageType": ["DERIVED", "PRIMARY", "OTHER"],
                }
            ],
            {**GE, **GRE},
            "dixon",
            {"water"},
        ),
        (
            [{"SeriesDescription": "FAT: Ax IDEAL", "ImageType": ["DERIVED", "PRIMARY", "OTHER"]}],
            {**GE, **GRE},
            "dixon",
            {"fat"},
        ),
        (
            [
                {
                    "SeriesDescription": "InPhase: Ax IDEAL",
                    "ImageType": ["DERIVED", "PRIMARY", "OTHER"],
                }
            ],
            {**GE, **GRE},
            "dixon",
            {"in_phase"},
        ),
        (
            [
                {
                    "SeriesDescription": "OutPhase: Ax IDEAL",
                    "ImageType": ["DERIVED", "PRIMARY", "OTHER"],
                }
            ],
            {**GE, **GRE},
            "dixon",
            {"opposed_phase"},
        ),
        # MEGRE: Siemens magnitude, Siemens phase, Philips real/imaginary, GE 4 parts in one series
        (
            echoes([2.0, 4.0, 6.0], ImageType=["ORIGINAL", "PRIMARY", "M", "ND"]),
            {**SIEMENS, **GRE},
            "megre",
            {"magnitude"},
        ),
        (
            echoes([2.0, 4.0, 6.0], ImageType=["ORIGINAL", "PRIMARY", "P", "ND"]),
            {**SIEMENS, **GRE},
            "megre",
            {"phase"},
        ),
        (
            echoes([2.0, 4.0], ImageType=["ORIGINAL", "PRIMARY", "R_FFE", "R", "FFE"])
            + echoes([2.0, 4.0], ImageType=["ORIGINAL", "PRIMARY", "I_FFE", "I", "FFE"]),
            {**PHILIPS, **GRE},
            "megre",
            {"real", "imaginary"},
        ),
        (
            [
                {"te": te, "ge_part": p, "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"]}
                for te in (3.9, 6.3)
                for p in range(4)
            ],
            {**GE, **GRE},
            "megre",
            {"magnitude", "phase", "real", "imaginary"},
        ),
        # MESE: Siemens, Philips, GE
        (
            echoes([10.0 * n for n in range(1, 8)], ImageType=["ORIGINAL", "PRIMARY", "M", "ND"]),
            {**SIEMENS, **SE},
            "mese",
            {"magnitude"},
        ),
        (
            echoes(
                [10.0 * n for n in range(1, 8)],
                ImageType=["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"],
            ),
            {**PHILIPS, **SE},
            "mese",
            {"magnitude"},
        ),
        (
            echoes(
                [10.0 * n for n in range(1, 8)],
                ImageType=["ORIGINAL", "PRIMARY", "OTHER"],
                ge_part=0,
            ),
            {**GE, **SE},
            "mese",
            {"magnitude"},
        ),
        # single-echo anatomy
        (
            [
                {
                    "te": 12.0,
                    "RepetitionTime": "600",
                    "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
                }
            ],
            {**SIEMENS, "ScanningSequence": "SE"},
            "t1w",
            {"magnitude"},
        ),
        (
            [{"te": 90.0, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}],
            {**SIEMENS, **SE},
            "t2w",
            {"magnitude"},
        ),
        (
            [{"te": 60.0, "InversionTime": "220", "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}],
            {**SIEMENS, "ScanningSequence": ["SE", "IR"], "RepetitionTime": "4000"},
            "stir",
            {"magnitude"},
        ),
        (
            [
                {
                    "te": 40.0,
                    "SeriesDescription": "cor TIRM",
                    "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
                }
            ],
            {**SIEMENS, **SE},
            "stir",
            {"magnitude"},
        ),
        # DTI, localizer
        (
            [
                {
                    "te": 70.0,
                    "SequenceName": "*ep_b1000#1",
                    "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"],
                }
            ],
            {**SIEMENS, "ScanningSequence": "EP"},
            "dti",
            {"magnitude"},
        ),
        (
            [
                {
                    "te": 1.5,
                    "SeriesDescription": "localizer",
                    "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
                }
            ],
            {**SIEMENS, **GRE},
            "localizer",
            {"magnitude"},
        ),
        (
            [
                {
                    "te": 1.5,
                    "SeriesDescription": "Survey",
                    "ImageType": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"],
                }
            ],
            {**PHILIPS, **GRE},
            "localizer",
            {"magnitude"},
        ),
    ],
)
def test_vendor_series_classification(images, common, label, parts) -> None:
    result = classify_series(series(images, **common))
    assert result.label == label, result.reason
    assert set(result.part_names) == parts
    assert result.rule_id is not None
    assert result.rules_version == "2"


def test_enhanced_mese_is_classified_from_functional_groups() -> None:
    ds = enhanced_image(
        np.zeros((4, 2, 2)),
        positions=[(0, 0, 0), (0, 0, 5), (0, 0, 0), (0, 0, 5)],
        echo_times_ms=[10.0, 10.0, 20.0, 20.0],
        series_uid=generate_uid(),
        study_uid=generate_uid(),
    )
    records = records_from_dataset(ds, Path("e.dcm"))
    result = classify_series(SeriesRecord(ds.SeriesInstanceUID, records))
    assert (result.label, result.part_names) == ("mese", ("magnitude",))


def test_enhanced_phase_frames_are_phase() -> None:
    ds = enhanced_image(
        np.zeros((2, 2, 2)),
        positions=[(0, 0, 0), (0, 0, 0)],
        echo_times_ms=[3.0, 6.0],
        series_uid=generate_uid(),
        study_uid=generate_uid(),
        complex_component="PHASE",
        EchoPulseSequence="GRADIENT",
    )
    records = records_from_dataset(ds, Path("e.dcm"))
    assert {image_part(r) for r in records} == {"phase"}
    result = classify_series(SeriesRecord(ds.SeriesInstanceUID, records))
    assert (result.label, result.part_names) == ("megre", ("phase",))


def test_unrecognised_series_fails_closed_to_other_with_reason() -> None:
    # an unknown vendor with no part hint and an odd single echo: no rule may guess
    result = classify_series(
        series(
            [{"te": 45.0, "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"]}],
            Manufacturer="ACME",
            ScanningSequence="RM",
        )
    )
    assert result.label == "other"
    assert result.rule_id is None
    assert "no recognisable image part" in result.reason
    assert "manufacturer='unknown'" in result.reason


def test_ge_unknown_private_part_value_is_not_guessed() -> None:
    result = classify_series(
        series(
            echoes([3.0, 6.0], ge_part=7, ImageType=["ORIGINAL", "PRIMARY", "OTHER"]), **GE, **GRE
        )
    )
    assert result.label == "other"


def test_protocol_name_does_not_make_dti() -> None:
    # the real GE MEGRE sample's ProtocolName says "DTI": only the series itself counts
    result = classify_series(
        series(echoes([3.9, 6.3], ge_part=0, ProtocolName="Thigh DTI DC FINAL"), **GE, **GRE)
    )
    assert result.label == "megre"


def _table() -> dict[str, Any]:
    return json.loads((RULES_DIR / "classification-v1.json").read_text())


def test_shipped_table_loads() -> None:
    table = load_rule_table(RULES_DIR / "classification-v1.json")
    assert table.version == "2"
    assert {r.label for r in table.series_rules} <= {
        "dixon",
        "megre",
        "mese",
        "t1w",
        "t2w",
        "stir",
        "dti",
        "dti_derived",
        "localizer",
    }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda t: t["series_rules"][0]["when"]["any"].append(
                {"feature": "colour", "op": "eq", "value": 1}
            ),
            "unknown feature",
        ),
        (
            lambda t: t["series_rules"][0]["when"]["any"].append(
                {"feature": "n_echoes", "op": "approx", "value": 1}
            ),
            "unknown operator",
        ),
        (lambda t: t["series_rules"][0].update(label="flair"), "unknown label"),
        (lambda t: t["part_rules"][0].update(part="complex"), "unknown part"),
        (lambda t: t["series_rules"][1].update(id=t["series_rules"][0]["id"]), "duplicate rule id"),
        (lambda t: t["outputs"]["megre"].update(water={"suffix": "X"}) or None, None),
        (lambda t: t["not_converted"].pop("other"), "neither output nor not_converted"),
        (lambda t: t.update(extra=1), "unknown keys"),
        (
            lambda t: t["series_rules"][0]["when"]["any"].append(
                {"feature": "series_description", "op": "matches", "value": "("}
            ),
            "bad regular expression",
        ),
    ],
)
def test_malformed_tables_are_rejected(mutate, message) -> None:
    table = _table()
    mutate(table)
    if message is None:  # a valid extension must still load
        parse_rule_table(table)
        return
    with pytest.raises(RuleTableError, match=message):
        parse_rule_table(table)


def test_enhanced_dixon_water_frames_win_over_magnitude_component() -> None:
    """Siemens XA / Philips enhanced Dixon: FrameType says WATER, ComplexImageComponent says
    MAGNITUDE; the Dixon part rules come first."""
    ds = enhanced_image(
        np.zeros((2, 2, 2)),
        positions=[(0, 0, 0), (0, 0, 4)],
        echo_times_ms=[2.46, 2.46],
        series_uid=generate_uid(),
        study_uid=generate_uid(),
        frame_type=("DERIVED", "PRIMARY", "DIXON", "WATER"),
        EchoPulseSequence="GRADIENT",
    )
    records = records_from_dataset(ds, Path("e.dcm"))
    result = classify_series(SeriesRecord(ds.SeriesInstanceUID, records))
    assert (result.label, result.part_names) == ("dixon", ("water",))
