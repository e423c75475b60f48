"""Label versions: validation, new version + diff, CorrectedCase, audit, recompute job, policy."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from flask import Flask
from sqlalchemy import select

from repository.errors import (
    AuthenticationRequired,
    Conflict,
    Forbidden,
    NotFound,
    ValidationError,
)
from repository.models import (
    AuditEvent,
    CorrectedCase,
    Derivative,
    Job,
    JobStatus,
    MuscleMetric,
    StoredObject,
    User,
)
from repository.services import audit, jobs, labels
from repository.services.context import ANONYMOUS, Actor
from tests.app_fixtures import World
from tests.labels.labels_helpers import (
    AFFINE,
    SHAPE,
    add_consent,
    base_labels,
    grant_access,
    make_segmented_visit,
    make_user,
    nifti_bytes,
)

VOXEL_ML = 2.0 * 2.0 * 5.0 / 1000.0


def _actor(app: Flask, email: str) -> Actor:
    with app.extensions["myovault"].db.transaction() as s:
        user = s.scalar(select(User).where(User.email == email))
        s.expunge(user)
    return Actor(user=user)


def _edited() -> np.ndarray:
    labels = base_labels()
    labels[6:10, 0:5, 0] = 1  # one slice of semitendinosus painted as biceps femoris LH
    labels[0, 0, :] = 0  # already background
    labels[1, 5:10, 3] = 0  # erase a column of left biceps femoris LH
    return labels


def _save(app: Flask, actor: Actor, derivative_id: int, data: bytes) -> labels.SavedVersion:
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        saved = labels.save_label_version(
            s, actor, derivative_id, data, store=ext.store, dispatch=ext.dispatch
        )
        s.flush()
        s.expunge_all()
    return saved


def _metrics(app: Flask, visit_id: int) -> dict[tuple[str, str, str], tuple[float, int | None]]:
    with app.extensions["myovault"].db.transaction() as s:
        rows = s.scalars(select(MuscleMetric).where(MuscleMetric.visit_id == visit_id))
        return {(m.muscle, m.side, m.metric): (m.value, m.derivative_id) for m in rows}


def test_pure_diff_counts_added_and_removed_per_label() -> None:
    old = np.array([0, 1, 1, 3, 3, 12])
    new = np.array([1, 1, 3, 3, 0, 12])
    diff, total = labels.label_diff(old, new, {1: "a", 3: "c", 12: "l"})
    assert total == 3
    assert diff == {"a": {"added": 1, "removed": 1}, "c": {"added": 1, "removed": 1}}


def test_validation_rejects_wrong_grid_labels_and_garbage() -> None:
    allowed = set(labels.label_set())
    good = nib.Nifti1Image(base_labels(), AFFINE)
    assert (
        labels.validate_labels(good, shape=SHAPE, affine=AFFINE, allowed=allowed).dtype == np.uint8
    )
    with pytest.raises(ValidationError, match="shape"):
        labels.validate_labels(
            nib.Nifti1Image(base_labels()[:, :, :3], AFFINE),
            shape=SHAPE,
            affine=AFFINE,
            allowed=allowed,
        )
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    with pytest.raises(ValidationError, match="grid"):
        labels.validate_labels(
            nib.Nifti1Image(base_labels(), shifted), shape=SHAPE, affine=AFFINE, allowed=allowed
        )
    bad = base_labels()
    bad[0, 0, 0] = 23
    with pytest.raises(ValidationError, match="unknown label"):
        labels.validate_labels(
            nib.Nifti1Image(bad, AFFINE), shape=SHAPE, affine=AFFINE, allowed=allowed
        )
    frac = base_labels().astype(np.float32)
    frac[0, 0, 0] = 0.5
    with pytest.raises(ValidationError, match="whole numbers"):
        labels.validate_labels(
            nib.Nifti1Image(frac, AFFINE), shape=SHAPE, affine=AFFINE, allowed=allowed
        )
    with pytest.raises(ValidationError, match="NIfTI"):
        labels.parse_label_nifti(b"not an image at all" * 30, max_bytes=10_000)
    bomb = gzip.compress(b"\0" * 1_000_000)
    with pytest.raises(ValidationError, match="larger"):
        labels.parse_label_nifti(bomb, max_bytes=10_000)


def test_save_creates_new_version_case_audit_and_job(app: Flask, world: World) -> None:
    seg = make_segmented_visit(app)
    investigator = _actor(app, world.emails["investigator"])
    saved = _save(app, investigator, seg.labels_id, nifti_bytes(_edited(), gz=False))
    new = saved.derivative
    assert new.version == 2 and new.id != seg.labels_id
    assert new.created_by_id == investigator.user_id
    assert new.parameters["previous_version_id"] == seg.labels_id
    # 4x5 voxels of semitendinosus became biceps femoris LH; 5 of the left muscle were erased
    assert new.parameters["diff"] == {
        "right_biceps_femoris_long_head": {"added": 20, "removed": 0},
        "right_semitendinosus": {"added": 0, "removed": 20},
        "left_biceps_femoris_long_head": {"added": 0, "removed": 5},
    }
    assert saved.voxels_changed == 25
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        chain = s.scalars(
            select(Derivative).where(Derivative.kind == "LABELS").order_by(Derivative.version)
        ).all()
        assert [d.version for d in chain] == [1, 2]  # the old version is kept
        old_obj = s.get(StoredObject, chain[0].object_id)
        new_obj = s.get(StoredObject, chain[1].object_id)
        assert old_obj.deleted_at is None and new_obj.key != old_obj.key
        assert "sub-" not in new_obj.key.split("/")[-1].split("_desc-")[1]
        stored = nib.Nifti1Image.from_bytes(
            gzip.decompress(ext.store.read_bytes(new_obj.key, expected_sha256=new_obj.sha256))
        )
        assert np.array_equal(np.asanyarray(stored.dataobj), _edited())
        assert np.allclose(stored.affine, AFFINE)
        old = nib.Nifti1Image.from_bytes(gzip.decompress(ext.store.read_bytes(old_obj.key)))
        assert np.array_equal(np.asanyarray(old.dataobj), base_labels())
        case = s.scalar(select(CorrectedCase))
        assert case is not None
        assert (case.labels_derivative_id, case.previous_derivative_id) == (new.id, seg.labels_id)
        assert (case.version, case.previous_version, case.voxels_changed) == (2, 1, 25)
        assert case.created_by_id == investigator.user_id and case.created_at is not None
        assert case.base_model_version == "thigh-unet-v1@1.0.0"
        assert case.image_object_id is not None and case.series_id == seg.series_id
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "labels.save_version"))
        assert event is not None and event.actor_id == investigator.user_id
        assert event.details["previous_version_id"] == seg.labels_id
        assert event.details["voxels_changed"] == 25
        assert audit.verify_chain(s).ok
        job = s.scalar(select(Job).where(Job.kind == labels.RECOMPUTE_JOB))
        assert job is not None and job.payload == {"labels_derivative_id": new.id}
        assert job.status == JobStatus.QUEUED
    assert app.config["DISPATCHED"] == [job.id]  # dispatched after commit


def test_recompute_job_replaces_metrics_with_rows_of_the_new_version(
    app: Flask, world: World
) -> None:
    seg = make_segmented_visit(app)
    before = _metrics(app, seg.visit_id)
    assert {d for _, d in before.values()} == {seg.labels_id}
    saved = _save(app, _actor(app, world.emails["owner"]), seg.labels_id, nifti_bytes(_edited()))
    ext = app.extensions["myovault"]
    assert jobs.run(ext.db, saved.job.id, ext.services()) == JobStatus.DONE
    after = _metrics(app, seg.visit_id)
    assert after and {d for _, d in after.values()} == {saved.derivative.id}
    # label 1: 80 voxels + 20 painted; label 3: 80 - 20; left label 12: 80 - 5
    assert after[("biceps_femoris_long_head", "R", "volume_ml")][0] == pytest.approx(100 * VOXEL_ML)
    assert after[("semitendinosus", "R", "volume_ml")][0] == pytest.approx(60 * VOXEL_ML)
    assert after[("biceps_femoris_long_head", "L", "volume_ml")][0] == pytest.approx(75 * VOXEL_ML)
    # FF of the right biceps femoris LH now mixes 80 voxels at 10 % and 20 at 40 %
    assert after[("biceps_femoris_long_head", "R", "ff_mean")][0] == pytest.approx(16.0)
    assert after[("semitendinosus", "R", "ff_mean")][0] == pytest.approx(40.0)
    assert after[("semitendinosus", "R", "t2w_mean")][0] == pytest.approx(35.0)
    with ext.db.transaction() as s:
        metric = s.scalar(select(MuscleMetric).limit(1))
        assert metric is not None and metric.model_version.endswith("+corrected.v2")
        d = s.get(Derivative, saved.derivative.id)
        assert d is not None and d.parameters["metrics"] == "done"
        tsv = s.scalar(select(Derivative).where(Derivative.kind == "METRICS_TSV"))
        assert tsv is not None and tsv.parameters["labels_derivative_id"] == d.id
        obj = s.get(StoredObject, tsv.object_id)
        text = ext.store.read_bytes(obj.key, expected_sha256=obj.sha256).decode()
        assert "semitendinosus" in text.splitlines()[2] or "semitendinosus" in text
        assert s.scalar(select(AuditEvent).where(AuditEvent.action == labels.RECOMPUTE_JOB))
        # the quick look is redrawn from the corrected labels (the viewer shows the latest)
        thumb = s.scalar(select(Derivative).where(Derivative.kind == "THUMBNAIL"))
        assert thumb is not None and thumb.parameters["labels_derivative_id"] == d.id
        png = ext.store.read_bytes(s.get(StoredObject, thumb.object_id).key)
        assert png.startswith(b"\x89PNG")
    # a second correction on top of version 2, then version 3's metrics replace version 2's
    third = _edited()
    third[6:10, 0:5, 1] = 1
    saved3 = _save(app, _actor(app, world.emails["owner"]), saved.derivative.id, nifti_bytes(third))
    assert saved3.derivative.version == 3
    assert jobs.run(ext.db, saved3.job.id, ext.services()) == JobStatus.DONE
    final = _metrics(app, seg.visit_id)
    assert {d for _, d in final.values()} == {saved3.derivative.id}
    assert len(final) == len(after)
    assert final[("semitendinosus", "R", "volume_ml")][0] == pytest.approx(40 * VOXEL_ML)


def test_only_the_current_version_can_be_corrected_and_no_op_edits_are_refused(
    app: Flask, world: World
) -> None:
    seg = make_segmented_visit(app)
    owner = _actor(app, world.emails["owner"])
    with pytest.raises(ValidationError, match="unchanged"):
        _save(app, owner, seg.labels_id, nifti_bytes(base_labels()))
    _save(app, owner, seg.labels_id, nifti_bytes(_edited()))
    with pytest.raises(Conflict, match="no longer current"):
        _save(app, owner, seg.labels_id, nifti_bytes(_edited()))


def test_history_lists_every_version_with_author_and_diff(app: Flask, world: World) -> None:
    seg = make_segmented_visit(app)
    inv = _actor(app, world.emails["investigator"])
    saved = _save(app, inv, seg.labels_id, nifti_bytes(_edited()))
    with app.extensions["myovault"].db.transaction() as s:
        hist = labels.history(s, inv, seg.labels_id)
        assert [v.version for v in hist.versions] == [1, 2]
        assert hist.current.id == saved.derivative.id and hist.current.is_current
        assert hist.versions[0].created_by == "pipeline"
        assert hist.current.created_by == "Investigator"
        assert hist.current.voxels_changed == 25
        assert hist.current.to_json()["diff"]["right_semitendinosus"]["removed"] == 20
        # the history is the same from any version of the chain
        assert [v.id for v in labels.history(s, inv, saved.derivative.id).versions] == [
            v.id for v in hist.versions
        ]


@pytest.mark.parametrize(
    ("who", "error"),
    [
        ("researcher", Forbidden),  # alpha is public: visible, but not editable
        ("dac", Forbidden),
        ("admin", Forbidden),  # admins run the service; they do not edit data
        ("other_owner", Forbidden),
        (None, AuthenticationRequired),
    ],
)
def test_only_owner_and_investigator_may_edit(
    app: Flask, world: World, who: str | None, error: type[Exception]
) -> None:
    seg = make_segmented_visit(app)
    actor = ANONYMOUS if who is None else _actor(app, world.emails[who])
    with pytest.raises(error):
        _save(app, actor, seg.labels_id, nifti_bytes(_edited()))
    with app.extensions["myovault"].db.transaction() as s:
        assert s.scalar(select(CorrectedCase)) is None


def test_grantee_may_view_versions_but_not_edit(app: Flask, world: World) -> None:
    seg = make_segmented_visit(app)
    add_consent(app)
    grant_access(app, world.emails["dac"], world.emails["researcher"])
    grantee = _actor(app, world.emails["researcher"])
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        assert [v.version for v in labels.history(s, grantee, seg.labels_id).versions] == [1]
        stream, _, _ = labels.open_version(s, grantee, seg.labels_id, store=ext.store)
        assert gzip.decompress(b"".join(stream))[:4] == (348).to_bytes(4, "little")
    with pytest.raises(Forbidden):
        _save(app, grantee, seg.labels_id, nifti_bytes(_edited()))


def test_grant_scope_limits_history_and_download(app: Flask, world: World) -> None:
    seg = make_segmented_visit(app)
    ext = app.extensions["myovault"]
    # a grant made before the subject consented does not cover it: the labels look absent
    make_user(app, "early@example.org")
    make_user(app, "metrics@example.org")
    make_segmented_visit(app, pseudonym="sub-other")
    add_consent(app, "sub-other")
    grant_access(app, world.emails["dac"], "early@example.org")
    with ext.db.transaction() as s, pytest.raises(NotFound):
        labels.history(s, _actor(app, "early@example.org"), seg.labels_id)
    # a metrics-only grant shows the history (counts per muscle) but not the label image
    add_consent(app)
    grant_access(app, world.emails["dac"], "metrics@example.org", kinds=("metrics",))
    only_metrics = _actor(app, "metrics@example.org")
    with ext.db.transaction() as s:
        assert labels.history(s, only_metrics, seg.labels_id).current.version == 1
        with pytest.raises(Forbidden):
            labels.open_version(s, only_metrics, seg.labels_id, store=ext.store)


def test_private_project_answers_404_and_unknown_ids_404(app: Flask, world: World) -> None:
    seg = make_segmented_visit(app, "beta")
    with pytest.raises(NotFound):
        _save(app, _actor(app, world.emails["researcher"]), seg.labels_id, nifti_bytes(_edited()))
    with pytest.raises(NotFound):
        _save(app, _actor(app, world.emails["owner"]), seg.labels_id, nifti_bytes(_edited()))
    with pytest.raises(NotFound):
        _save(app, _actor(app, world.emails["other_owner"]), 999_999, nifti_bytes(_edited()))
    with app.extensions["myovault"].db.transaction() as s:  # a map is not a label image
        ff_id = s.scalar(select(Derivative.id).where(Derivative.kind == "FF"))
    with pytest.raises(NotFound):
        _save(app, _actor(app, world.emails["other_owner"]), ff_id, nifti_bytes(_edited()))


def test_rerunning_segmentation_keeps_a_corrected_series(app: Flask, world: World) -> None:
    from repository.services.pipeline_segment import _corrected_series

    seg = make_segmented_visit(app)
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        assert _corrected_series(s, [seg.series_id]) == set()
    _save(app, _actor(app, world.emails["investigator"]), seg.labels_id, nifti_bytes(_edited()))
    with ext.db.transaction() as s:
        assert _corrected_series(s, [seg.series_id]) == {seg.series_id}
        assert _corrected_series(s, []) == set()
