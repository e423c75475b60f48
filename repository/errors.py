"""Domain exceptions of the repository layer, mapped to HTTP statuses in one place (api/errors)."""

from __future__ import annotations


class MyoVaultError(Exception):
    """Base of every repository error; ``code`` is the stable machine-readable name."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(MyoVaultError):
    """The configuration cannot work; raised at start-up with a message saying what to fix."""

    code = "misconfigured"
    status = 500


class ValidationError(MyoVaultError):
    code = "invalid"
    status = 422


class BadRequest(MyoVaultError):
    code = "bad_request"
    status = 400


class AuthenticationRequired(MyoVaultError):
    code = "unauthenticated"
    status = 401


class InvalidCredentials(AuthenticationRequired):
    code = "invalid_credentials"


class TooManyAttempts(MyoVaultError):
    code = "rate_limited"
    status = 429


class Forbidden(MyoVaultError):
    code = "forbidden"
    status = 403


class NotFound(MyoVaultError):
    code = "not_found"
    status = 404


class Conflict(MyoVaultError):
    code = "conflict"
    status = 409


class ServiceUnavailable(MyoVaultError):
    code = "unavailable"
    status = 503
