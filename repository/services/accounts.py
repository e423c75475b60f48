"""Users, logins (rate-limited, audited) and API tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from repository.errors import (
    Conflict,
    InvalidCredentials,
    NotFound,
    TooManyAttempts,
    ValidationError,
)
from repository.models import ApiToken, LoginAttempt, User
from repository.models._types import utcnow
from repository.security import policy
from repository.security.passwords import hash_password, verify_password
from repository.services import audit
from repository.services.context import Actor

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TOKEN_PREFIX = "mvt_"  # noqa: S105  (a public marker, not a secret)


@dataclass(frozen=True)
class LoginLimits:
    max_failures: int
    window_s: int


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 320:
        raise ValidationError(f"{email!r} is not a valid email address")
    return email


def create_user(
    session: Session,
    actor: Actor,
    *,
    email: str,
    name: str,
    password: str,
    is_admin: bool = False,
    is_verified: bool = True,
    institution: str = "",
) -> User:
    if not actor.system:
        policy.require(session, actor, "admin.manage_users")
    email = normalise_email(email)
    if not name.strip():
        raise ValidationError("a name is required")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"an account for {email} already exists")
    try:
        password_hash = hash_password(password)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc
    user = User(
        email=email,
        name=name.strip(),
        password_hash=password_hash,
        is_admin=is_admin,
        is_verified=is_verified,
        institution=institution,
    )
    session.add(user)
    session.flush()
    audit.record(
        session,
        actor,
        "user.create",
        object_type="user",
        object_id=user.id,
        details={"email": email, "is_admin": is_admin},
    )
    return user


def set_user_flags(
    session: Session,
    actor: Actor,
    user_id: int,
    *,
    is_active: bool | None = None,
    is_admin: bool | None = None,
) -> User:
    policy.require(session, actor, "admin.manage_users")
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    changes: dict[str, bool] = {}
    if is_active is not None and user.is_active != is_active:
        if user.id == actor.user_id and not is_active:
            raise ValidationError("you cannot deactivate your own account")
        user.is_active, changes["is_active"] = is_active, is_active
    if is_admin is not None and user.is_admin != is_admin:
        if user.id == actor.user_id and not is_admin:
            raise ValidationError("you cannot remove your own admin role")
        user.is_admin, changes["is_admin"] = is_admin, is_admin
    if changes:
        audit.record(
            session, actor, "user.update", object_type="user", object_id=user.id, details=changes
        )
    return user


def list_users(session: Session, actor: Actor) -> list[User]:
    policy.require(session, actor, "admin.manage_users")
    return list(session.scalars(select(User).order_by(User.email)))


def _recent_failures(
    session: Session, column: InstrumentedAttribute[str], value: str, since: datetime
) -> int:
    return (
        session.scalar(
            select(func.count(LoginAttempt.id)).where(
                column == value, LoginAttempt.success.is_(False), LoginAttempt.at > since
            )
        )
        or 0
    )


def authenticate(
    session: Session, *, email: str, password: str, ip: str, limits: LoginLimits
) -> User:
    """Check a password login. Rate-limited per account and per address; every try audited.

    The caller must commit even when this raises, so failures are recorded.
    """
    email = email.strip().lower()
    since = utcnow() - timedelta(seconds=limits.window_s)
    anon = Actor(user=None, ip=ip)
    if (
        _recent_failures(session, LoginAttempt.email, email, since) >= limits.max_failures
        or _recent_failures(session, LoginAttempt.ip, ip, since) >= 4 * limits.max_failures
    ):
        audit.record(session, anon, "login.blocked", object_type="user", details={"email": email})
        raise TooManyAttempts(
            f"too many failed logins; try again in {limits.window_s // 60} minutes"
        )
    user = session.scalar(select(User).where(User.email == email))
    ok = verify_password(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        session.add(LoginAttempt(email=email, ip=ip, success=False))
        audit.record(
            session,
            anon,
            "login.failed",
            object_type="user",
            object_id=user.id if user else "",
            details={"email": email},
        )
        raise InvalidCredentials("wrong email or password")
    session.add(LoginAttempt(email=email, ip=ip, success=True))
    user.last_login_at = utcnow()
    audit.record(
        session, Actor(user=user, ip=ip), "login.success", object_type="user", object_id=user.id
    )
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, actor: Actor, *, name: str, days: int, max_days: int
) -> tuple[ApiToken, str]:
    """Create a token for the actor; the plain token is returned once and never stored."""
    policy.require(session, actor, "token.manage_own")
    assert actor.user is not None  # guaranteed by the policy  # noqa: S101
    if not 1 <= days <= max_days:
        raise ValidationError(f"token lifetime must be 1 to {max_days} days")
    if not name.strip():
        raise ValidationError("give the token a name")
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=actor.user.id,
        name=name.strip()[:100],
        prefix=plain[:12],
        token_hash=_token_hash(plain),
        expires_at=utcnow() + timedelta(days=days),
    )
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor,
        "token.create",
        object_type="api_token",
        object_id=token.id,
        details={"name": token.name, "expires_at": token.expires_at.isoformat()},
    )
    return token, plain


def revoke_token(session: Session, actor: Actor, token_id: int) -> None:
    policy.require(session, actor, "token.manage_own")
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != actor.user_id:
        raise NotFound("no such token")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, actor, "token.revoke", object_type="api_token", object_id=token.id)


def list_tokens(session: Session, actor: Actor) -> list[ApiToken]:
    policy.require(session, actor, "token.manage_own")
    return list(
        session.scalars(
            select(ApiToken).where(ApiToken.user_id == actor.user_id).order_by(ApiToken.created_at)
        )
    )


def user_for_token(session: Session, plain: str) -> User:
    """The active user a bearer token belongs to; expired or revoked tokens are refused."""
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(plain)))
    if token is None:
        raise InvalidCredentials("unknown API token")
    if token.revoked_at is not None:
        raise InvalidCredentials("this API token was revoked")
    if token.expires_at <= utcnow():
        raise InvalidCredentials("this API token has expired")
    if not token.user.is_active:
        raise InvalidCredentials("this account is deactivated")
    token.last_used_at = utcnow()
    return token.user


def reset_password(session: Session, actor: Actor, *, email: str, password: str) -> User:
    """Set a new password; existing web sessions end (they are bound to the old hash)."""
    if not actor.system:
        policy.require(session, actor, "admin.manage_users")
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no account for {email}")
    try:
        user.password_hash = hash_password(password)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc
    audit.record(session, actor, "user.password_reset", object_type="user", object_id=user.id)
    return user
