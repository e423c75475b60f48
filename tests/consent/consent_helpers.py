"""Tiny literal fixtures for the consent tests: subjects with objects, maps, metrics, consents."""

from __future__ import annotations

from datetime import date
from typing import Any

from flask import Flask
from sqlalchemy import select

from repository.models import (
    Derivative,
    MuscleMetric,
    Project,
    Series,
    StoredObject,
    Subject,
    User,
    Visit,
)
from repository.services import consent as consent_service
from repository.services.context import Actor

BASE_CONSENT = {
    "form": "MyoVault consent",
    "form_version": "1.0",
    "signed_on": "2024-01-15",
    "lawful_basis": "6(1)(e)",
    "special_category_basis": "9(2)(j)",
}


def user(session, email: str) -> Actor:
    return Actor(user=session.scalar(select(User).where(User.email == email)))


def add_subject(
    app: Flask, project_slug: str, pseudonym: str, *, image: bytes, t2map: bytes
) -> int:
    """A subject with one visit, one MESE series, one T2 map and two metrics (real encrypted objects)."""
    ext = app.extensions["myovault"]
    image_info = ext.store.put(f"objects/{pseudonym.lower()}-mese.nii.gz", image, subject=pseudonym)
    map_info = ext.store.put(f"objects/{pseudonym.lower()}-t2.nii.gz", t2map, subject=pseudonym)
    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == project_slug))
        subject = Subject(project_id=project.id, pseudonym=pseudonym, sex="F", disease="FSHD")
        session.add(subject)
        session.flush()
        visit = Visit(subject_id=subject.id, label="01", age_at_scan_years=40.5)
        session.add(visit)
        session.flush()
        objs = []
        for info, kind in ((image_info, "MESE"), (map_info, "T2")):
            obj = StoredObject(
                key=info.key,
                size=info.size,
                sha256=info.sha256,
                key_id=info.key_id,
                subject_id=subject.id,
                kind=kind,
            )
            session.add(obj)
            objs.append(obj)
        session.flush()
        series = Series(
            visit_id=visit.id,
            series_uid="1.2.3",
            contrast="MESE",
            object_id=objs[0].id,
            mids_path=f"sub-{pseudonym}/ses-01/mr-anat/sub-{pseudonym}_ses-01_mese.nii.gz",
        )
        session.add(series)
        session.flush()
        der = Derivative(
            visit_id=visit.id,
            series_id=series.id,
            kind="T2",
            object_id=objs[1].id,
            software="myovault-qmri",
            software_version="0.1.0",
            model_version="epg-1",
            parameters={"echo_spacing_ms": 10.0},
        )
        session.add(der)
        session.flush()
        for side, value in (("L", 35.5), ("R", 36.25)):
            session.add(
                MuscleMetric(
                    subject_id=subject.id,
                    visit_id=visit.id,
                    derivative_id=der.id,
                    muscle="semimembranosus",
                    side=side,
                    metric="t2_water_mean",
                    value=value,
                    unit="ms",
                    model_version="epg-1",
                )
            )
        return subject.id


def give_consent(
    app: Flask, email: str, project_slug: str, pseudonym: str, terms: str, **extra: Any
) -> None:
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == project_slug))
        consent_service.record_consent(
            session,
            user(session, email),
            project,
            {**BASE_CONSENT, "pseudonym": pseudonym, "duo_terms": terms, **extra},
        )


def today() -> date:
    return date.today()
