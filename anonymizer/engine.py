"""Apply a compiled profile to pydicom datasets: the de-identification engine."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID
from pydicom.uid import DeflatedExplicitVRLittleEndian as DEFLATED

from anonymizer import encoding, pixels
from anonymizer.dates import age_string, shift_da, shift_dt
from anonymizer.errors import NotDicomError, UnsafeFileError
from anonymizer.profile import Action, Profile, load_profile
from anonymizer.pseudonym import Pseudonymizer
from anonymizer.report import STATUS_NOT_DICOM, STATUS_QUARANTINED, STATUS_WRITTEN, FileResult
from anonymizer.verify import Identifiers, capture_identifiers, clean_text, verify_output

DUMMY_TEXT = "ANONYMIZED"
IMPLEMENTATION_VERSION = "MYOVAULT_ANON1"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMERIC_ZERO = {"US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "UV": 0, "SV": 0}
_DUMMY_BY_VR: dict[str, object] = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "IS": "0",
    "DS": "0",
    "AS": "000D",
    "UR": "",
    **_NUMERIC_ZERO,
}
_AGE_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


class _Context:
    """Per-file state of one de-identification run."""

    def __init__(self, pseudonym: str, shift_days: int, ids: Identifiers) -> None:
        self.pseudonym = pseudonym
        self.shift_days = shift_days
        self.pattern = ids.clean_pattern()
        self.counts: Counter[str] = Counter()


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _creator_name(ds: Dataset, tag: int) -> str:
    """Private creator string, decoded from the raw bytes when still raw (no conversion)."""
    raw = ds.get_item(tag)
    value = getattr(raw, "value", None)
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    return str(ds[tag].value or "").strip()


def _raw_values(data: bytes) -> list[str]:
    """Values of a raw string element as pydicom would convert them (padding removed)."""
    text = data.decode("latin-1").rstrip(" \x00")
    return text.split("\\") if text else []


def _pad(data: bytes, pad: bytes) -> bytes:
    return data + pad if len(data) % 2 else data


def _vr(raw: object, tag: int) -> str:
    """VR of a stored element (read from the file when explicit, else the dictionary's)."""
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _set(elem: DataElement, values: list[str]) -> None:
    if not values:
        elem.value = None
    elif len(values) == 1:
        elem.value = values[0]
    else:
        elem.value = values


class Deidentifier:
    """De-identify DICOM files of one project with one profile.

    Parameters
    ----------
    secret
        Per-project secret (≥ 16 bytes); keys pseudonyms, UIDs and date shifts.
    project, site
        Project and site identifiers (part of the subject key).
    profile
        Compiled profile; default :func:`~anonymizer.profile.load_profile`.
    uid_root
        ``None`` for ``2.25.<int>`` UIDs, or an organisation root.
    pixel_rules
        Burned-in text cleaning rules; default the shipped ``pixel_rules.json``.
    """

    def __init__(
        self,
        secret: bytes,
        project: str,
        site: str = "",
        profile: Profile | None = None,
        uid_root: str | None = None,
        pixel_rules: tuple[pixels.PixelRule, ...] | None = None,
    ) -> None:
        self.profile = profile or load_profile()
        self.pseudo = Pseudonymizer(secret, project, site, uid_root)
        self.pixel_rules = pixels.load_pixel_rules() if pixel_rules is None else pixel_rules
        self._method = self._method_values(())
        self._marks: dict[bool, list[RawDataElement]] = {}

    # ----------------------------------------------------------------- public API
    def deidentify_file(self, path: str | Path, source: str | None = None) -> FileResult:
        """Read, de-identify and verify one file; never raises for unsafe content.

        Parameters
        ----------
        path
            File to read.
        source
            Name to report (default: ``str(path)``).
        """
        name = source or str(path)
        try:
            ds = read_dicom(path)
        except NotDicomError as exc:
            return FileResult(name, STATUS_NOT_DICOM, "not-dicom", str(exc))
        return self.deidentify_dataset(ds, name)

    def deidentify_dataset(self, ds: Dataset, source: str = "<dataset>") -> FileResult:
        """De-identify a dataset read from a Part 10 file (modified in place).

        Returns a :class:`FileResult`: ``written`` with the verified dataset, or
        ``quarantined`` with the reason.
        """
        try:
            return self._run(ds, source)
        except UnsafeFileError as exc:
            return FileResult(source, STATUS_QUARANTINED, exc.reason, exc.detail, exc.findings)
        except Exception as exc:  # fail closed: any unexpected error keeps the file in quarantine
            return FileResult(
                source, STATUS_QUARANTINED, "processing-error", f"{type(exc).__name__} raised"
            )

    # ----------------------------------------------------------------- pipeline
    def _run(self, ds: Dataset, source: str) -> FileResult:
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            raise UnsafeFileError("invalid-dicom", "no file meta transfer syntax")
        sop_class = str(ds.get("SOPClassUID", meta.get("MediaStorageSOPClassUID", "")))
        if sop_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
            raise UnsafeFileError("dicomdir", "DICOMDIR media directory is not de-identified")
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            raise UnsafeFileError("invalid-dicom", "no SOP class or instance UID")
        warnings: list[str] = []
        pixel_actions: list[str] = []
        risk = pixels.header_risk(ds)
        frames = pixels.native_frames(ds)
        if risk is None and frames is not None and any(pixels.detect_text(f) for f in frames):
            risk = "text detected in pixels"
        if risk is not None:
            rule = pixels.clean_pixels(ds, self.pixel_rules, risk)
            pixel_actions.append(f"clean:{rule}")
        patient_id = str(ds.get("PatientID", "") or "").strip()
        if not patient_id:
            patient_id = "study:" + str(ds.get("StudyInstanceUID", ""))
            warnings.append("no PatientID: subject keyed by Study Instance UID")
        ids = capture_identifiers(ds, self.profile)
        ctx = _Context(
            self.pseudo.subject_pseudonym(patient_id),
            self.pseudo.date_shift_days(patient_id),
            ids,
        )
        self._add_age(ds, ctx)
        self._apply(ds, ctx)
        self._mark(ds, pixel_actions, UID(str(meta.TransferSyntaxUID)))
        self._rebuild_file_meta(ds, str(meta.TransferSyntaxUID))
        encoded = encode(ds)
        findings = verify_output(
            ds, encoded, ids, pseudonym=ctx.pseudonym, owns_uid=self.pseudo.owns_uid
        )
        if findings:
            raise UnsafeFileError(
                "verifier",
                f"{len(findings)} residual identifier finding(s)",
                [str(f) for f in findings],
            )
        return FileResult(
            source,
            STATUS_WRITTEN,
            counts=dict(ctx.counts),
            subject=ctx.pseudonym,
            output_name=output_name(ds, ctx.pseudonym),
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            pixel_actions=pixel_actions,
            warnings=warnings,
            dataset=ds,
            encoded=encoded,
        )

    def _add_age(self, ds: Dataset, ctx: _Context) -> None:
        if str(ds.get("PatientAge", "") or "").strip():
            return
        birth = str(ds.get("PatientBirthDate", "") or "")
        for keyword in _AGE_DATES:
            on = str(ds.get(keyword, "") or "")
            age = age_string(birth, on) if birth and on else None
            if age:
                ds.PatientAge = age
                ctx.counts["age_computed"] += 1
                return

    # ----------------------------------------------------------------- the walk
    def _apply(self, ds: Dataset, ctx: _Context) -> None:
        creators: dict[int, int] = {}
        creator_keys: dict[int, int] = {}
        private: list[int] = []
        delete: list[int] = []
        counts = ctx.counts
        actions = self.profile.actions
        action_for = self.profile.action_for
        # ds.items() yields the stored (possibly still raw) elements: no value conversion
        for key, raw in list(ds.items()):
            tag = int(key)  # plain int: dictionary lookups stay in C
            group, element = tag >> 16, tag & 0xFFFF
            if group & 1:
                if 0x10 <= element <= 0xFF:
                    creators[tag] = 0
                    creator_keys[tag] = key
                elif element >= 0x1000:
                    private.append(key)
                else:
                    delete.append(key)  # private group length or reserved element
                continue
            if element == 0 or group in (0x0000, 0x0002, 0xFFFA, 0xFFFC):
                delete.append(key)  # group lengths, command/meta elements, padding
                continue
            action = actions.get(tag)
            if action is None:
                action = action_for(tag)
                if action is Action.REMOVE:
                    counts["remove_unlisted"] += 1
                    delete.append(key)
                    continue
            counts[action.value] += 1
            if action is Action.REMOVE or self._act(ds, key, raw, _vr(raw, tag), action, ctx):
                delete.append(key)
        names = {t: _creator_name(ds, t) for t in creators} if private else {}
        safe_private = self.profile.safe_private
        for private_key in private:
            tag = int(private_key)
            group, block = tag >> 16, (tag >> 8) & 0xFF
            creator_tag = (group << 16) | block
            name = names.get(creator_tag, "")
            if name and (group, name, tag & 0xFF) in safe_private:
                creators[creator_tag] += 1
                counts["keep_private"] += 1
            else:
                counts["remove_private"] += 1
                delete.append(private_key)
        delete += [creator_keys[tag] for tag, kept in creators.items() if not kept]
        for stored in delete:
            del ds[stored]  # BaseTag keys: pydicom's cheap deletion path

    def _act(
        self, ds: Dataset, tag: int, raw: object, vr: str, action: Action, ctx: _Context
    ) -> bool:
        """Apply one action; return True if the element must be deleted."""
        if action is Action.REMOVE:
            return True
        if action is Action.KEEP:
            if vr == "SQ":
                for item in ds[tag].value or ():
                    self._apply(item, ctx)
            return False
        if vr == "UN":
            ctx.counts["remove_uninterpretable"] += 1
            return True
        if isinstance(raw, RawDataElement) and vr != "SQ":
            done = self._act_raw(ds, tag, raw, vr, action, ctx)
            if done is not None:
                return done
        elem = ds[tag]
        if action is Action.BLANK:
            elem.value = Sequence() if vr == "SQ" else None
        elif action is Action.CLEAN_SEQUENCE:
            if vr != "SQ":
                return True
            for item in elem.value or ():
                self._apply(item, ctx)
        elif vr == "SQ":
            elem.value = Sequence()
        elif action is Action.PSEUDONYM:
            elem.value = ctx.pseudonym
        elif action is Action.REMAP_UID or (action is Action.DUMMY and vr == "UI"):
            _set(elem, [self.pseudo.remap_uid(u) for u in _values(elem.value) if u.strip()])
        elif action is Action.DATE_SHIFT:
            return self._shift(elem, vr, ctx)
        elif action is Action.CLEAN_TEXT:
            if vr not in _TEXT_VRS:
                return True
            cleaned = [clean_text(v, ctx.pattern) for v in _values(elem.value)]
            _set(elem, [c for c in cleaned if c])
        elif action is Action.DUMMY:
            if vr in _TEXT_VRS:
                elem.value = DUMMY_TEXT
            elif vr in _DUMMY_BY_VR:
                elem.value = _DUMMY_BY_VR[vr]
            else:
                elem.value = None
        else:
            return True
        return False

    def _act_raw(
        self,
        ds: Dataset,
        tag: int,
        raw: RawDataElement,
        vr: str,
        action: Action,
        ctx: _Context,
    ) -> bool | None:
        """Byte-level version of the common actions on a still-raw element.

        Produces exactly the bytes the value-level path (below in :meth:`_act`) would write,
        without converting the value to Python objects; returns ``None`` when the action or
        value is not handled here (the value-level path then runs).
        """
        data = raw.value
        if not isinstance(data, bytes) or raw.length == 0xFFFFFFFF:
            return None
        if action is Action.BLANK:
            new = b""
        elif vr in _TEXT_VRS and action in (Action.PSEUDONYM, Action.DUMMY):
            text = ctx.pseudonym if action is Action.PSEUDONYM else DUMMY_TEXT
            new = _pad(text.encode("ascii"), b" ")
        elif vr == "UI" and action in (Action.REMAP_UID, Action.DUMMY):
            values = _raw_values(data)
            remap = self.pseudo.remap_uid
            new = _pad("\\".join(remap(u) for u in values if u.strip()).encode("ascii"), b"\x00")
        elif action is Action.DATE_SHIFT and vr in ("DA", "DT"):
            shifter = shift_da if vr == "DA" else shift_dt
            out: list[str] = []
            for value in _raw_values(data):
                shifted = shifter(value, ctx.shift_days)
                if shifted is None:
                    ctx.counts["date_blanked"] += 1
                    out = []
                    break
                out.append(shifted)
            new = _pad("\\".join(out).encode("latin-1"), b" ")
        else:
            return None
        ds[tag] = raw._replace(value=new, length=len(new))
        return False

    def _shift(self, elem: DataElement, vr: str, ctx: _Context) -> bool:
        shifter = {"DA": shift_da, "DT": shift_dt}.get(vr)
        if shifter is None:
            return True
        out = []
        for value in _values(elem.value):
            shifted = shifter(value, ctx.shift_days)
            if shifted is None:
                ctx.counts["date_blanked"] += 1
                elem.value = None
                return False
            out.append(shifted)
        _set(elem, out)
        return False

    # ----------------------------------------------------------------- marking
    def _method_values(self, pixel_actions: tuple[str, ...]) -> list[str]:
        values = [
            f"MyoVault {self.profile.version}",
            f"DICOM PS3.15 {self.profile.edition} Table E.1-1 Basic Profile",
            "RtnLongModifDates RtnPatChars CleanDesc RtnSafePriv",
        ]
        values += [a[:64] for a in pixel_actions]
        return values

    def _mark(self, ds: Dataset, pixel_actions: list[str], syntax: UID) -> None:
        if not pixel_actions and syntax.is_little_endian and syntax != DEFLATED:
            # the same marking on every output: ready-made raw elements (see encoding.py)
            implicit = bool(syntax.is_implicit_VR)
            marks = self._marks.get(implicit)
            if marks is None:
                template = Dataset()
                self._mark_values(template, [])
                marks = self._marks[implicit] = encoding.raw_elements(template, implicit)
            for raw in marks:
                ds[raw.tag] = raw
            return
        self._mark_values(ds, pixel_actions)

    def _mark_values(self, ds: Dataset, pixel_actions: list[str]) -> None:
        for keyword, value in self.profile.adds.items():
            setattr(ds, keyword, value)
        ds.DeidentificationMethod = self._method_values(tuple(pixel_actions))
        codes = list(self.profile.options)
        if pixel_actions:
            codes.append(("113101", "Clean Pixel Data Option"))
        ds.DeidentificationMethodCodeSequence = Sequence([code_item(c, m) for c, m in codes])

    def _rebuild_file_meta(self, ds: Dataset, transfer_syntax: str) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = UID(transfer_syntax)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta


def code_item(value: str, meaning: str) -> Dataset:
    """A DCM-coded item of DeidentificationMethodCodeSequence (CID 7050)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def read_dicom(path: str | Path) -> Dataset:
    """Read a DICOM Part 10 file; raise :class:`NotDicomError` for anything else."""
    try:
        # one read of the whole file, then parsing from memory (faster than many small reads)
        return dcmread(io.BytesIO(Path(path).read_bytes()))
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError) as exc:
        raise NotDicomError(f"not a readable DICOM Part 10 file ({type(exc).__name__})") from exc


def _short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("ascii", "replace")).hexdigest()[:length]


def output_name(ds: Dataset, pseudonym: str) -> str:
    """Relative output path built from the pseudonym and hashes of *new* UIDs only.

    ``<pseudonym>/ses-<8 hex>/ser-<number>-<8 hex>/<16 hex>.dcm``.
    """
    study = _short_hash(str(ds.get("StudyInstanceUID", "")), 8)
    series = _short_hash(str(ds.get("SeriesInstanceUID", "")), 8)
    number = str(ds.get("SeriesNumber", "") or "0").strip()
    number = f"{int(number):03d}" if number.lstrip("-").isdigit() else "000"
    instance = _short_hash(str(ds.SOPInstanceUID), 16)
    return f"{pseudonym}/ses-{study}/ser-{number}-{series}/{instance}.dcm"


def encode(ds: Dataset) -> bytes:
    """Part 10 encoding of a dataset with its file meta (what :func:`write_dataset` writes).

    Raw (unchanged) elements are copied byte for byte; see :mod:`anonymizer.encoding`.
    """
    return encoding.encode(ds)


def write_dataset(ds: Dataset | bytes, path: str | Path) -> None:
    """Write a de-identified dataset (or its encoding) as a Part 10 file, atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = ds if isinstance(ds, bytes) else encode(ds)
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(target)
