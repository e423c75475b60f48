"""Which subjects may appear in search, counts and new cohort snapshots.

A subject is *shareable* when it is not erased and its latest consent version exists, is not
withdrawn and has not expired. Search, snapshots and access requests all use this one clause,
so a withdrawal takes effect everywhere at once.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import ColumnElement, and_, func, or_, select

from repository.models import Consent, Subject


def shareable_subject_clause(today: date | None = None) -> ColumnElement[bool]:
    """A WHERE clause on :class:`Subject` selecting the subjects whose consent lets them be shared."""
    today = today or date.today()
    latest = (
        select(Consent.subject_id, func.max(Consent.version).label("version"))
        .group_by(Consent.subject_id)
        .subquery()
    )
    current = select(Consent.subject_id).join(
        latest,
        and_(Consent.subject_id == latest.c.subject_id, Consent.version == latest.c.version),
    ).where(
        Consent.withdrawn_on.is_(None),
        or_(Consent.expires_on.is_(None), Consent.expires_on >= today),
    )
    return and_(Subject.erased_at.is_(None), Subject.id.in_(current))
