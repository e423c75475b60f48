"""Fast Part 10 encoding of de-identified datasets (little-endian transfer syntaxes).

pydicom's writer spends most of its time in per-element bookkeeping. After de-identification
most elements of an MR header are still the raw bytes read from the input (never converted to
Python values), so they can be copied as they are; changed elements are encoded here for the
common value representations, and anything unusual is handed to pydicom's own element writer.
The result is the same byte stream :func:`pydicom.filewriter.dcmwrite` produces (checked by
``tests/anonymizer/test_anonymizer_encoding.py`` on real and planted files) except for the
preamble, which is always 128 zero bytes (an input preamble is never carried over).

Datasets whose encoding cannot be reproduced this way (big endian, deflated, a changed
character set, element lengths that overflow their VR) are written by ``dcmwrite``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import EXPLICIT_VR_LENGTH_32, dcmwrite, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

PREAMBLE = b"\x00" * 128 + b"DICM"
_LONG_VRS = frozenset(str(v) for v in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF
_ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, _UNDEFINED)
_ITEM_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQ_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
_META_VERSION = b"\x00\x01"
#: VRs written as ``str`` joined by backslashes, latin-1 (pydicom ``write_string``)
_STRING_VRS = frozenset({"AE", "AS", "CS", "UR", "DA", "DT", "TM"})
#: VRs written with the dataset's character set (pydicom ``write_text``): ASCII values only here
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_NUMBER_STRING_VRS = frozenset({"IS", "DS"})
_STRUCT = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})


class _Fallback(Exception):
    """The dataset must be written by pydicom's ``dcmwrite``."""


def encode(ds: Dataset) -> bytes:
    """Part 10 encoding of ``ds`` with its ``file_meta`` (group 0002 rebuilt from it).

    Parameters
    ----------
    ds
        Dataset with a ``file_meta`` holding at least the transfer syntax, SOP class and
        SOP instance UIDs.

    Returns
    -------
    bytes
        Preamble (zeros), ``DICM``, file meta information, then the dataset.
    """
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        if not syntax.is_little_endian or syntax == DeflatedExplicitVRLittleEndian:
            raise _Fallback
        if tuple(ds.original_encoding) not in ((None, None), (syntax.is_implicit_VR, True)):
            raise _Fallback  # raw values would need re-encoding
        if ds.original_character_set != _charset(ds):
            raise _Fallback
        out = bytearray(PREAMBLE)
        out += _meta(ds)
        _dataset(out, ds, syntax.is_implicit_VR, ds.get("SpecificCharacterSet"))
        return bytes(out)
    except _Fallback:
        return _pydicom_encode(ds)


def _pydicom_encode(ds: Dataset) -> bytes:
    saved = getattr(ds, "preamble", None)
    ds.preamble = None  # never carry an input preamble over
    try:
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue()
    finally:
        ds.preamble = saved


def _charset(ds: Dataset) -> list[str]:
    value = ds.get("SpecificCharacterSet")
    return convert_encodings(value or None)


def _meta(ds: Dataset) -> bytes:
    meta = ds.file_meta
    if "FileMetaInformationVersion" not in meta:
        meta.FileMetaInformationVersion = _META_VERSION
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
        if not meta.get(keyword):
            raise _Fallback
    body = bytearray()
    for tag in sorted(meta.keys()):
        if tag == 0x00020000:
            continue
        _element(body, meta.get_item(tag), False, None)
    return struct.pack("<HH2sHL", 2, 0, b"UL", 4, len(body)) + bytes(body)


def _dataset(out: bytearray, ds: Dataset, implicit: bool, charset: object) -> None:
    charset = ds.get("SpecificCharacterSet", charset)
    # the stored elements in tag order (int keys: no Python-level tag comparisons)
    for tag, elem in sorted(ds.items(), key=_int_key):
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # retired group lengths are never written
        _element(out, elem, implicit, charset)


def _int_key(item: tuple[int, object]) -> int:
    return int(item[0])


def _header(out: bytearray, tag: int, vr: str, length: int, implicit: bool) -> None:
    if implicit:
        out += struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length)
    elif vr in _LONG_VRS:
        out += struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, length)
    else:
        if length > 0xFFFF or len(vr) != 2:
            raise _Fallback
        out += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), length)


def _element(
    out: bytearray, elem: DataElement | RawDataElement, implicit: bool, charset: object
) -> None:
    tag = int(elem.tag)
    if isinstance(elem, RawDataElement):
        value = elem.value
        if elem.length == _UNDEFINED or not isinstance(value, bytes) or elem.is_buffered:
            raise _Fallback
        if elem.VR is None and not implicit:
            raise _Fallback
        _header(out, tag, str(elem.VR or ""), len(value), implicit)
        out += value
        return
    vr = str(elem.VR)
    if vr == "SQ":
        _sequence(out, elem, implicit, charset)
        return
    data = _value_bytes(elem, vr)
    if data is None:
        _pydicom_element(out, elem, implicit, charset)
        return
    if elem.is_undefined_length:
        raise _Fallback
    _header(out, tag, vr, len(data), implicit)
    out += data


def _sequence(out: bytearray, elem: DataElement, implicit: bool, charset: object) -> None:
    tag = int(elem.tag)
    items: Iterable[Dataset] = elem.value or ()
    body = bytearray()
    for item in items:
        if getattr(item, "is_undefined_length_sequence_item", False):
            body += _ITEM
            _dataset(body, item, implicit, charset)
            body += _ITEM_DELIMITER
        else:
            inner = bytearray()
            _dataset(inner, item, implicit, charset)
            body += struct.pack("<HHL", 0xFFFE, 0xE000, len(inner))
            body += inner
    if elem.is_undefined_length:
        _header(out, tag, "SQ", _UNDEFINED, implicit)
        out += body
        out += _SEQ_DELIMITER
    else:
        _header(out, tag, "SQ", len(body), implicit)
        out += body


def _is_multi(value: object) -> bool:
    return isinstance(value, MultiValue | list | tuple)


def _pad(data: bytes, pad: bytes) -> bytes:
    return data + pad if len(data) % 2 else data


def _value_bytes(elem: DataElement, vr: str) -> bytes | None:
    """Encoded value exactly as pydicom writes it, or ``None`` to let pydicom do it."""
    value = elem.value
    if value is None or value == "" or (_is_multi(value) and not len(value)):  # type: ignore[arg-type]
        return b""
    if vr in _STRING_VRS or vr == "UI" or vr in _TEXT_VRS:
        items = list(value) if _is_multi(value) else [value]  # type: ignore[call-overload]
        if not all(isinstance(v, str) and v.isascii() for v in items):
            return None
        if vr == "UI":
            return _pad("\\".join(items).encode("ascii"), b"\x00")
        return _pad("\\".join(items).encode("ascii"), b" ")
    if vr in _NUMBER_STRING_VRS:
        items = list(value) if _is_multi(value) else [value]  # type: ignore[call-overload]
        texts = [str(getattr(v, "original_string", v)) for v in items]
        if not all(t.isascii() for t in texts):
            return None
        return _pad("\\".join(texts).encode("ascii"), b" ")
    fmt = _STRUCT.get(vr)
    if fmt is not None:
        items = list(value) if _is_multi(value) else [value]  # type: ignore[call-overload]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            return None
        try:
            return struct.pack(f"<{len(items)}{fmt}", *items)
        except struct.error:
            return None
    if vr in _BYTES_VRS and isinstance(value, bytes):
        return _pad(value, b"\x00") if vr in ("OB", "UN") else value
    return None


def _pydicom_element(out: bytearray, elem: DataElement, implicit: bool, charset: object) -> None:
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = implicit
    write_data_element(buf, elem, charset)  # type: ignore[arg-type]
    out += buf.getvalue()


def raw_elements(template: Dataset, implicit: bool) -> list[RawDataElement]:
    """Pre-encode the elements of ``template`` as little-endian raw elements.

    Used for the attributes set identically on every output (the de-identification marking):
    inserting ready-made raw elements costs a dictionary assignment per file, and pydicom
    still converts them on access. Only values this module encodes itself are accepted.

    Raises
    ------
    ValueError
        If an element cannot be encoded here.
    """
    out = []
    charset = template.get("SpecificCharacterSet")
    for tag in sorted(template.keys()):
        elem = template[tag]
        vr = str(elem.VR)
        if vr == "SQ":
            body = bytearray()
            for item in elem.value or ():
                inner = bytearray()
                _dataset(inner, item, implicit, charset)
                body += struct.pack("<HHL", 0xFFFE, 0xE000, len(inner))
                body += inner
            data: bytes | None = bytes(body)
        else:
            data = _value_bytes(elem, vr)
        if data is None:
            raise ValueError(f"cannot pre-encode {elem.tag} ({vr})")
        out.append(
            RawDataElement(
                elem.tag, None if implicit else vr, len(data), data, 0, implicit, True, True, False
            )
        )
    return out
