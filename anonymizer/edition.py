"""Identity of the shipped profile: edition of Table E.1-1, profile version, recipe path."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
EDITION = "2026c"
PROFILE_VERSION = "myovault-ps315-2026c-v1"
RECIPE_PATH = DATA_DIR / f"{PROFILE_VERSION}.deid"
