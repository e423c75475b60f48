"""Every table of MyoVault; importing this module registers them all on ``Base.metadata``."""

from repository.models.access import AccessRequest, Consent, Decision, Download, Grant
from repository.models.accounts import ApiToken, LoginAttempt, User
from repository.models.audit import AuditEvent
from repository.models.imaging import (
    Derivative,
    MuscleMetric,
    Series,
    StoredObject,
    Subject,
    Visit,
)
from repository.models.jobs import Job, JobStatus
from repository.models.keys import SubjectKey
from repository.models.projects import Membership, Project, Role, Site

__all__ = [
    "AccessRequest",
    "ApiToken",
    "AuditEvent",
    "Consent",
    "Decision",
    "Derivative",
    "Download",
    "Grant",
    "Job",
    "JobStatus",
    "LoginAttempt",
    "Membership",
    "MuscleMetric",
    "Project",
    "Role",
    "Series",
    "Site",
    "StoredObject",
    "Subject",
    "SubjectKey",
    "User",
    "Visit",
]
