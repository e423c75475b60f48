"""Every table of MyoVault; importing this module registers them all on ``Base.metadata``."""

from repository.models.access import (
    AccessRequest,
    Comment,
    Consent,
    DacSettings,
    Decision,
    Download,
    DownloadLink,
    Grant,
    Notification,
    Vote,
)
from repository.models.accounts import ApiToken, LoginAttempt, User
from repository.models.audit import AuditEvent
from repository.models.catalog import CohortSnapshot, ProjectMetadataVersion, SavedQuery
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
from repository.models.labels import CorrectedCase
from repository.models.projects import Membership, Project, Role, Site
from repository.models.search_index import SearchProfile, SearchSubject, search_visit_ff
from repository.models.uploads import FileState, Upload, UploadChunk, UploadFile, UploadState

__all__ = [
    "SearchProfile",
    "SearchSubject",
    "search_visit_ff",
    "Vote",
    "Notification",
    "DownloadLink",
    "DacSettings",
    "Comment",
    "AccessRequest",
    "ApiToken",
    "AuditEvent",
    "CohortSnapshot",
    "CorrectedCase",
    "Consent",
    "Decision",
    "Derivative",
    "Download",
    "Grant",
    "Job",
    "JobStatus",
    "LoginAttempt",
    "FileState",
    "Membership",
    "MuscleMetric",
    "Project",
    "ProjectMetadataVersion",
    "Role",
    "SavedQuery",
    "Series",
    "Site",
    "StoredObject",
    "Subject",
    "SubjectKey",
    "Upload",
    "UploadChunk",
    "UploadFile",
    "UploadState",
    "User",
    "Visit",
]
