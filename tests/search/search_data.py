"""Synthetic cohorts for the search tests: rows created directly, seeded randomness."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from sqlalchemy.orm import Session

from repository.models import Consent, MuscleMetric, Series, StoredObject, Subject, Visit
from repository.services.search import MUSCLES


@dataclass
class Made:
    subject_id: int
    sex: str
    disease: str
    ff: dict[tuple[str, str], list[float]]  # (muscle, side) → FF per visit
    ages: list[float]


def populate(
    session: Session, project_id: int, n: int, seed: int, disease: str = "FSHD", prefix: str = "s"
) -> list[Made]:
    rng = np.random.default_rng(seed)
    made = []
    for i in range(n):
        sex = "F" if rng.random() < 0.5 else "M"
        subject = Subject(
            project_id=project_id, pseudonym=f"{prefix}{i:04d}", sex=sex, disease=disease
        )
        session.add(subject)
        session.flush()
        session.add(
            Consent(
                subject_id=subject.id,
                version=1,
                form="main",
                form_version="1",
                signed_on=date(2025, 1, 1),
                lawful_basis="consent",
                duo_terms=["GRU"],
            )
        )
        ff: dict[tuple[str, str], list[float]] = {}
        ages = []
        for v in range(1 + int(rng.integers(0, 2))):
            age = float(np.round(20 + 40 * rng.random(), 1))
            ages.append(age)
            visit = Visit(
                subject_id=subject.id,
                label=f"{v + 1:02d}",
                age_at_scan_years=age,
                day_offset=365 * v,
            )
            session.add(visit)
            session.flush()
            obj = StoredObject(
                key=f"obj/{subject.id}/{v}",
                size=100 + v,
                sha256=f"{subject.id:032d}{v:032d}",
                key_id="k",
                subject_id=subject.id,
                kind="nifti",
            )
            session.add(obj)
            session.flush()
            session.add(
                Series(
                    visit_id=visit.id,
                    series_uid=f"1.2.{subject.id}.{v}",
                    contrast="MESE",
                    vendor="Siemens" if i % 3 else "Philips",
                    field_strength_t=3.0,
                    anatomy="thigh",
                    object_id=obj.id,
                )
            )
            for muscle in MUSCLES:
                for side in ("L", "R"):
                    value = float(np.round(60 * rng.random(), 2))
                    ff.setdefault((muscle, side), []).append(value)
                    session.add(
                        MuscleMetric(
                            subject_id=subject.id,
                            visit_id=visit.id,
                            muscle=muscle,
                            side=side,
                            metric="ff_mean",
                            value=value,
                            unit="%",
                        )
                    )
        made.append(Made(subject.id, sex, disease, ff, ages))
    session.flush()
    return made
