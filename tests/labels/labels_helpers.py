"""A segmented visit made directly (no pipeline run): image, FF and T2 maps, labels v1, metrics.

The geometry is small and known, so tests can predict exactly what a label edit changes:
a 12 x 10 x 4 grid of 2 x 2 x 5 mm voxels (0.02 mL each); label 1 (right biceps femoris long
head) fills x 1..4, label 3 (right semitendinosus) x 6..9, label 12 (left biceps femoris long
head) x 1..4 of the upper half of y (80 voxels each); FF is 10 % in label 1, 40 % in label 3,
70 % elsewhere; water T2 is 35 ms everywhere.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from flask import Flask
from sqlalchemy import select

from repository.models import (
    Derivative,
    MuscleMetric,
    Project,
    Series,
    StoredObject,
    Subject,
    Visit,
)
from repository.services.pipeline import FITTER
from repository.services.pipeline_segment import SEGMENTER

SHAPE = (12, 10, 4)
ZOOMS = (2.0, 2.0, 5.0)
AFFINE = np.diag([*ZOOMS, 1.0])
AFFINE[:3, 3] = (-11.0, -9.0, 0.0)
STEM = "{p}/ses-1/mr-anat/{p}_ses-1_mese"
QUANT = "{p}/ses-1/mr-quant/{p}_ses-1_mese"


def base_labels() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:5, 0:5] = 1
    labels[6:10, 0:5] = 3
    labels[1:5, 5:10] = 12
    return labels


def ff_map() -> np.ndarray:
    ff = np.full(SHAPE, 70.0, dtype=np.float32)
    ff[1:5, 0:5] = 10.0
    ff[6:10, 0:5] = 40.0
    return ff


def nifti_bytes(data: np.ndarray, *, gz: bool = True, affine: np.ndarray | None = None) -> bytes:
    image = nib.Nifti1Image(data, AFFINE if affine is None else affine)
    image.header.set_zooms(ZOOMS + ((1.0,) if data.ndim == 4 else ()))
    raw = image.to_bytes()
    return gzip.compress(raw) if gz else raw


@dataclass
class Segmented:
    project_id: int
    subject_id: int
    visit_id: int
    series_id: int
    labels_id: int


def _put(ext, session, key: str, data: bytes, subject: Subject, kind: str) -> StoredObject:
    info = ext.store.put(key, io.BytesIO(data), subject=subject.pseudonym)
    obj = StoredObject(
        key=info.key,
        size=info.size,
        sha256=info.sha256,
        key_id=info.key_id,
        subject_id=subject.id,
        kind=kind,
        content_type="application/gzip",
    )
    session.add(obj)
    session.flush()
    return obj


def make_segmented_visit(
    app: Flask, slug: str = "alpha", pseudonym: str = "sub-lbl01"
) -> Segmented:
    ext = app.extensions["myovault"]
    ext.keyring.data_key(pseudonym, create=True)  # before our transaction (SQLite locks)
    stem, quant = STEM.format(p=pseudonym), QUANT.format(p=pseudonym)
    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == slug))
        assert project is not None
        subject = Subject(project_id=project.id, pseudonym=pseudonym)
        session.add(subject)
        session.flush()
        visit = Visit(subject_id=subject.id, label="1")
        session.add(visit)
        session.flush()
        rng = np.random.default_rng(0)
        image = (100 + 10 * rng.random((*SHAPE, 2))).astype(np.float32)
        image_obj = _put(
            ext, session, f"mids/p{project.id}/{stem}.nii.gz", nifti_bytes(image), subject, "nifti"
        )
        series = Series(
            visit_id=visit.id,
            series_uid="1.2.3",
            contrast="MESE",
            mids_path=stem,
            object_id=image_obj.id,
        )
        session.add(series)
        session.flush()
        for kind, suffix, data in (
            ("FF", "_desc-mese_FF.nii.gz", ff_map()),
            ("T2", "_T2.nii.gz", np.full(SHAPE, 35.0, dtype=np.float32)),
        ):
            obj = _put(
                ext,
                session,
                f"mids/p{project.id}/{quant}{suffix}",
                nifti_bytes(data),
                subject,
                "derivative",
            )
            session.add(
                Derivative(
                    visit_id=visit.id,
                    series_id=series.id,
                    kind=kind,
                    object_id=obj.id,
                    software=FITTER,
                    software_version="test",
                )
            )
        labels_img = nib.Nifti1Image(base_labels(), AFFINE)
        labels_img.header.set_zooms(ZOOMS)
        labels_obj = _put(
            ext,
            session,
            f"mids/p{project.id}/{quant}_dseg.nii.gz",
            gzip.compress(labels_img.to_bytes()),
            subject,
            "derivative",
        )
        labels = Derivative(
            visit_id=visit.id,
            series_id=series.id,
            kind="LABELS",
            object_id=labels_obj.id,
            software=SEGMENTER,
            software_version="1.0.0",
            model_version="thigh-unet-v1@1.0.0",
            parameters={"source": stem, "erosion_voxels": 0, "qc_flags": []},
        )
        session.add(labels)
        session.flush()
        # what the pipeline indexed for version 1 (volume of label 1: 20 voxels x 0.02 mL)
        session.add_all(
            MuscleMetric(
                subject_id=subject.id,
                visit_id=visit.id,
                derivative_id=labels.id,
                muscle=muscle,
                side=side,
                metric="volume_ml",
                value=value,
                unit="ml",
                model_version="thigh-unet-v1@1.0.0",
            )
            for muscle, side, value in (
                ("biceps_femoris_long_head", "R", 0.8),
                ("semitendinosus", "R", 0.8),
                ("biceps_femoris_long_head", "L", 0.8),
            )
        )
        return Segmented(project.id, subject.id, visit.id, series.id, labels.id)


def grant_access(
    app: Flask,
    dac_email: str,
    email: str,
    kinds: tuple[str, ...] = ("images", "maps", "metrics"),
) -> None:
    """An approved access request on alpha -> active grant (conditions accepted) for ``email``.

    The subject must have a current consent (:func:`add_consent`): grants cover consented
    subjects only.
    """
    from repository.models import Grant, User
    from repository.models._types import utcnow
    from repository.services import access
    from repository.services.context import Actor

    with app.extensions["myovault"].db.transaction() as session:
        user = session.scalar(select(User).where(User.email == email))
        dac = session.scalar(select(User).where(User.email == dac_email))
        alpha = session.scalar(select(Project).where(Project.slug == "alpha"))
        req = access.create_request(
            session,
            Actor(user=user),
            alpha,
            purpose="Checking automatic thigh muscle segmentations against the images.",
            use={"purpose": "HMB"},
            institution="Uni L",
            data_kinds=list(kinds),
        )
        access.cast_vote(session, Actor(user=dac), req.id, "approve")
        access.decide(session, Actor(user=dac), req.id, "approved", "fine by the committee")
        grant = session.scalar(select(Grant).where(Grant.request_id == req.id))
        assert grant is not None and grant.subject_ids
        grant.conditions_accepted_at = utcnow()


def add_consent(app: Flask, pseudonym: str = "sub-lbl01", slug: str = "alpha") -> None:
    """A current broad research consent, so the subject's corrections may be exported."""
    from repository.services import consent as consent_service
    from repository.services.context import SYSTEM

    with app.extensions["myovault"].db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == slug))
        consent_service.record_consent(
            session,
            SYSTEM,
            project,
            {
                "form": "MyoVault consent",
                "form_version": "1.0",
                "signed_on": "2024-01-15",
                "lawful_basis": "6(1)(e)",
                "special_category_basis": "9(2)(j)",
                "pseudonym": pseudonym,
                "duo_terms": "HMB",
            },
        )


def make_user(app: Flask, email: str) -> None:
    """A verified researcher account (no project role)."""
    from repository.services import accounts
    from repository.services.context import SYSTEM
    from tests.app_fixtures import PASSWORD

    with app.extensions["myovault"].db.transaction() as session:
        accounts.create_user(session, SYSTEM, email=email, name=email, password=PASSWORD)
