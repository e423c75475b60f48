#!/usr/bin/env python3
"""Pre-commit hook: refuse files whose content is DICOM, whatever their name.

DICOM files often have no extension (``IM0001``, ``1.2.840...``), so a name filter alone
misses them. A DICOM Part 10 file carries the magic ``DICM`` at byte offset 128. Files under
``tests/fixtures/`` are excluded by the hook configuration, not here.
"""

from __future__ import annotations

import sys
from pathlib import Path

PREAMBLE_BYTES = 128
MAGIC = b"DICM"


def is_dicom(path: Path) -> bool:
    """Whether ``path`` starts with a DICOM Part 10 preamble and magic."""
    try:
        with path.open("rb") as handle:
            head = handle.read(PREAMBLE_BYTES + len(MAGIC))
    except OSError:
        return False
    return head[PREAMBLE_BYTES:] == MAGIC


def main(argv: list[str]) -> int:
    found = [name for name in argv if is_dicom(Path(name))]
    for name in found:
        print(f"{name}: DICOM content must not be committed (only under tests/fixtures/)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
