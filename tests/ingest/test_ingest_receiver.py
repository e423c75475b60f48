"""C-STORE receiver: real associations from pynetdicom's SCU on 127.0.0.1 (port chosen by OS)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ingest_helpers import classic_image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from ingest.receiver import (
    Destination,
    ReceiverConfigError,
    StudyReceiver,
    _Pending,
    parse_ae_table,
)

TABLE = {"SCANNER1": {"project": "MYO-1", "site": "basel"}}


class Staging:
    """Collects staged instances in a folder, like the repository's quarantine would."""

    def __init__(self, root: Path, fail: bool = False) -> None:
        self.root = root
        self.fail = fail
        self.completed: list[tuple[str, str, tuple[Path, ...]]] = []
        self.done = threading.Event()

    def stage(self, ae: str, dest: Destination, study: str, sop: str, data: bytes) -> Path:
        if self.fail:
            raise OSError("disk full")
        path = self.root / dest.project / dest.site / study / f"{sop}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def complete(self, ae: str, study: str, paths: tuple[Path, ...]) -> None:
        self.completed.append((ae, study, paths))
        self.done.set()


def _datasets(study_uid: str, n: int) -> list[Dataset]:
    series_uid = generate_uid()
    return [
        classic_image(
            np.full((4, 4), k, dtype=np.uint16),
            position=(0, 0, float(k)),
            series_uid=series_uid,
            study_uid=study_uid,
        )
        for k in range(n)
    ]


def _send(port: int, datasets: list[Dataset], calling: str = "SCANNER1") -> list[int] | None:
    scu = AE(ae_title=calling)
    scu.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = scu.associate("127.0.0.1", port, ae_title="MYOVAULT")
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_study_is_staged_and_completed_once_quiet(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    receiver = StudyReceiver(
        parse_ae_table(TABLE), staging.stage, staging.complete, quiet_seconds=0.3
    )
    _host, port = receiver.start("127.0.0.1", 0)
    try:
        study = generate_uid()
        datasets = _datasets(study, 3)
        assert _send(port, datasets) == [0, 0, 0]
        assert staging.done.wait(10), "study never reported complete"
    finally:
        receiver.stop()
    ((ae, study_uid, paths),) = staging.completed
    assert (ae, study_uid) == ("SCANNER1", study)
    assert len(paths) == 3
    assert all(p.parent == tmp_path / "MYO-1" / "basel" / study for p in paths)
    received = sorted(pydicom.dcmread(p).SOPInstanceUID for p in paths)
    assert received == sorted(ds.SOPInstanceUID for ds in datasets)


def test_unknown_calling_ae_is_rejected(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    receiver = StudyReceiver(
        parse_ae_table(TABLE), staging.stage, staging.complete, quiet_seconds=0.2
    )
    _host, port = receiver.start("127.0.0.1", 0)
    try:
        assert _send(port, _datasets(generate_uid(), 1), calling="INTRUDER") is None
    finally:
        receiver.stop()
    assert not staging.completed
    assert not list(tmp_path.rglob("*.dcm"))


def test_staging_failure_is_reported_to_sender(tmp_path: Path) -> None:
    staging = Staging(tmp_path, fail=True)
    receiver = StudyReceiver(
        parse_ae_table(TABLE), staging.stage, staging.complete, quiet_seconds=0.2
    )
    _host, port = receiver.start("127.0.0.1", 0)
    try:
        assert _send(port, _datasets(generate_uid(), 1)) == [0xA700]
    finally:
        receiver.stop()
    assert not staging.completed


def test_quiet_period_uses_clock_and_failed_callbacks_are_retried(tmp_path: Path) -> None:
    now = [0.0]
    calls: list[str] = []

    def flaky(ae: str, study: str, paths: tuple[Path, ...]) -> None:
        calls.append(study)
        if len(calls) == 1:
            raise RuntimeError("database down")

    receiver = StudyReceiver(
        parse_ae_table(TABLE), lambda *a: tmp_path, flaky, quiet_seconds=10, clock=lambda: now[0]
    )
    # one staged instance at t=0 (white-box: no network needed to test the timing rule)
    receiver._pending[("SCANNER1", "1.2.3")] = _Pending(0.0, [tmp_path / "a"])
    now[0] = 5.0
    assert receiver.poll() == []
    now[0] = 10.0
    assert receiver.poll() == []  # callback raised: kept for retry
    assert calls == ["1.2.3"]
    now[0] = 15.0
    assert receiver.poll() == []
    now[0] = 20.0
    assert receiver.poll() == [("SCANNER1", "1.2.3")]


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"": {"project": "p", "site": "s"}},
        {"A" * 17: {"project": "p", "site": "s"}},
        {"OK": {"project": "p"}},
        {"OK": {"project": "p", "site": "s", "extra": "x"}},
    ],
)
def test_bad_ae_tables_are_rejected(raw) -> None:
    with pytest.raises(ReceiverConfigError):
        parse_ae_table(raw)


@pytest.mark.realdata
def test_real_enhanced_study_by_c_store_then_converted(shared_data: Path, tmp_path: Path) -> None:
    """17 real enhanced MR files over C-STORE, staged, then (marked) converted to ORMIR-MIDS."""
    from ingest_helpers import mark_deidentified

    from ingest.convert import convert, plan_conversion
    from ingest.scan import scan_folder

    staging = Staging(tmp_path / "quarantine")
    receiver = StudyReceiver(
        parse_ae_table(TABLE), staging.stage, staging.complete, quiet_seconds=0.5
    )
    _host, port = receiver.start("127.0.0.1", 0)
    files = sorted((shared_data / "real" / "siemens_xa_enhanced_mese_calf").glob("*.dcm"))
    try:
        scu = AE(ae_title="SCANNER1")
        scu.add_requested_context("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.1.2.1")
        assoc = scu.associate("127.0.0.1", port, ae_title="MYOVAULT")
        assert assoc.is_established
        try:
            statuses = [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
        finally:
            assoc.release()
        assert statuses == [0] * 17
        assert staging.done.wait(15)
    finally:
        receiver.stop()
    ((_ae, _study, paths),) = staging.completed
    assert len(paths) == 17
    marked = mark_deidentified(paths[0].parent, tmp_path / "marked")
    result = convert(plan_conversion(scan_folder(marked)), tmp_path / "out")
    assert not result.failed
    (mese,) = result.files
    assert mese.shape == (256, 128, 8, 17)
