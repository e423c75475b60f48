"""DICOM C-STORE receiver (pynetdicom SCP) for scanners and PACS.

* Calling AE titles map to a (project, site) :class:`Destination` through a data table; an
  association from an AE title not in the table is rejected (fail closed).
* Each received instance is handed, as encoded DICOM Part 10 bytes, to a caller-given
  ``stage`` callback (the repository writes it to encrypted quarantine) which returns where it
  was put. A staging failure answers the sender with a failure status so it can retry.
* Once a study has received nothing for ``quiet_seconds``, ``on_study_complete(ae_title,
  study_uid, paths)`` fires once with every staged location of that study, from a background
  thread. Instances arriving later for the same study start a new batch.

No Flask, no database: the repository wires ``stage`` and ``on_study_complete`` to its
services.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.events import Event

from ingest.errors import IngestError

LOGGER = logging.getLogger(__name__)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


class ReceiverConfigError(IngestError):
    """The AE-title table is malformed."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where images from one calling AE title belong."""

    project: str
    site: str


def parse_ae_table(raw: Mapping[str, Mapping[str, str]]) -> dict[str, Destination]:
    """Validate ``{"AE_TITLE": {"project": "...", "site": "..."}}`` (AE titles ≤ 16 chars)."""
    table: dict[str, Destination] = {}
    for ae_title, entry in raw.items():
        title = ae_title.strip()
        if not title or len(title) > 16 or not title.isascii() or "\\" in title:
            raise ReceiverConfigError(f"invalid AE title {ae_title!r}")
        if set(entry) != {"project", "site"} or not all(
            isinstance(v, str) and v for v in entry.values()
        ):
            raise ReceiverConfigError(f"AE title {title}: needs exactly non-empty project and site")
        table[title] = Destination(entry["project"], entry["site"])
    if not table:
        raise ReceiverConfigError("the AE-title table is empty: no sender would be accepted")
    return table


#: stage(ae_title, destination, study_uid, sop_instance_uid, encoded_part10_bytes) -> location
StageCallback = Callable[[str, Destination, str, str, bytes], Path]
#: on_study_complete(ae_title, study_uid, staged locations)
StudyCallback = Callable[[str, str, tuple[Path, ...]], None]


@dataclass
class _Pending:
    last_seen: float
    paths: list[Path] = field(default_factory=list)


class StudyReceiver:
    """A C-STORE SCP that batches instances per (calling AE, study) until the study is quiet."""

    def __init__(
        self,
        ae_table: Mapping[str, Destination],
        stage: StageCallback,
        on_study_complete: StudyCallback,
        *,
        ae_title: str = "MYOVAULT",
        quiet_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if quiet_seconds <= 0:
            raise ReceiverConfigError("quiet_seconds must be positive")
        self._table = dict(ae_table)
        self._stage = stage
        self._on_complete = on_study_complete
        self._quiet = quiet_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._stop = threading.Event()
        self._server: Any = None
        self._watcher: threading.Thread | None = None
        self._ae = AE(ae_title=ae_title)
        self._ae.supported_contexts = StoragePresentationContexts
        self._ae.require_calling_aet = list(self._table)

    # -- network ---------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 11112) -> tuple[str, int]:
        """Start listening (non-blocking); return the bound (host, port) (port 0 = any free)."""
        self._server = self._ae.start_server(
            (host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._handle_store)]
        )
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="study-quiet", daemon=True)
        self._watcher.start()
        bound = self._server.server_address
        return str(bound[0]), int(bound[1])

    def stop(self, *, flush: bool = True) -> None:
        """Stop listening; with ``flush`` fire the callback for studies still pending."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        if flush:
            self.poll(force=True)

    def __enter__(self) -> StudyReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- events ----------------------------------------------------------------------------

    def _handle_store(self, event: Event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        destination = self._table.get(calling)
        if destination is None:  # require_calling_aet already rejects; defence in depth
            return STATUS_CANNOT_UNDERSTAND
        try:
            dataset = event.dataset
            study_uid = str(dataset.StudyInstanceUID)
            sop_uid = str(dataset.SOPInstanceUID)
            encoded = event.encoded_dataset(include_meta=True)
        except Exception:  # a malformed dataset from the network must not kill the server
            LOGGER.exception("C-STORE from %s: cannot decode dataset", calling)
            return STATUS_CANNOT_UNDERSTAND
        try:
            location = self._stage(calling, destination, study_uid, sop_uid, encoded)
        except Exception:  # staging is the caller's; tell the sender to retry later
            LOGGER.exception("C-STORE from %s: staging failed", calling)
            return STATUS_OUT_OF_RESOURCES
        with self._lock:
            pending = self._pending.setdefault((calling, study_uid), _Pending(self._clock()))
            pending.last_seen = self._clock()
            pending.paths.append(location)
        return STATUS_SUCCESS

    def poll(self, *, force: bool = False) -> list[tuple[str, str]]:
        """Fire ``on_study_complete`` for every quiet study; return their (AE, study UID).

        A study whose callback raises is put back and retried after another quiet period.
        """
        now = self._clock()
        with self._lock:
            ready = [
                key
                for key, pending in self._pending.items()
                if force or now - pending.last_seen >= self._quiet
            ]
            batches = [(key, tuple(self._pending.pop(key).paths)) for key in ready]
        fired = []
        for (ae_title, study_uid), paths in batches:
            try:
                self._on_complete(ae_title, study_uid, paths)
                fired.append((ae_title, study_uid))
            except Exception:  # one failing study must not block the others; retry it later
                LOGGER.exception("on_study_complete failed for a study from %s", ae_title)
                with self._lock:
                    pending = self._pending.setdefault((ae_title, study_uid), _Pending(now))
                    pending.last_seen = self._clock()
                    pending.paths[:0] = paths
        return fired

    def _watch(self) -> None:
        interval = min(max(self._quiet / 4, 0.05), 5.0)
        while not self._stop.wait(interval):
            self.poll()
