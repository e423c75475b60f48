"""Which subjects may appear in search, counts and new cohort snapshots.

A subject is *shareable* when it is not erased and its latest consent version exists, is not
withdrawn and has not expired. Search, snapshots and access requests all use this one clause,
so a withdrawal takes effect everywhere at once.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import ColumnElement, and_, exists, or_
from sqlalchemy.orm import aliased

from repository.models import Consent, Subject


def shareable_subject_clause(today: date | None = None) -> ColumnElement[bool]:
    """A WHERE clause on :class:`Subject` selecting the subjects whose consent lets them be shared.

    Written as correlated ``EXISTS`` / ``NOT EXISTS`` (served by the unique index on
    ``consents(subject_id, version)``) rather than a grouped "latest version" subquery, so it
    costs one index probe per candidate subject instead of a scan of every consent.
    """
    today = today or date.today()
    consent, newer = aliased(Consent), aliased(Consent)
    current_and_valid = exists().where(
        consent.subject_id == Subject.id,
        consent.withdrawn_on.is_(None),
        or_(consent.expires_on.is_(None), consent.expires_on >= today),
        ~exists().where(newer.subject_id == consent.subject_id, newer.version > consent.version),
    )
    return and_(Subject.erased_at.is_(None), current_and_valid)
