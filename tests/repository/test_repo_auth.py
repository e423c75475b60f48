"""Login, logout, CSRF, rate limiting, sessions."""

from __future__ import annotations

from sqlalchemy import select

from repository.models import AuditEvent, User
from tests.app_fixtures import PASSWORD, csrf_token, login


def _actions(app) -> list[str]:
    with app.extensions["myovault"].db.transaction() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def test_login_success_sets_a_hardened_session_cookie(app, client, world):
    response = login(client, world.emails["researcher"])
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/dashboard")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert "Rita" not in page.get_data(as_text=True)  # sanity: the world's own name is shown
    assert "Researcher" in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store, private"
    assert "login.success" in _actions(app)


def test_wrong_password_is_refused_and_audited(app, client, world):
    response = login(client, world.emails["owner"], "not the password at all")
    assert response.status_code == 401
    assert "wrong email or password" in response.get_data(as_text=True)
    assert client.get("/dashboard").status_code == 302
    assert _actions(app)[-1] == "login.failed"


def test_unknown_account_gets_the_same_message(client, world):
    response = login(client, "nobody@example.org", "whatever-password")
    assert response.status_code == 401
    assert "wrong email or password" in response.get_data(as_text=True)


def test_login_is_rate_limited_per_account(app, client, world):
    email = world.emails["dac"]
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        assert login(client, email, "wrong-password-123").status_code == 401
    blocked = login(client, email, PASSWORD)  # even the right password is refused now
    assert blocked.status_code == 429
    assert "too many failed logins" in blocked.get_data(as_text=True)
    assert _actions(app)[-1] == "login.blocked"


def test_form_without_csrf_token_is_rejected(client, world):
    response = client.post("/login", data={"email": world.emails["admin"], "password": PASSWORD})
    assert response.status_code == 400
    assert "form expired" in response.get_data(as_text=True)
    login(client, world.emails["admin"])
    no_token = client.post(
        "/admin/users",
        data={"email": "x@example.org", "name": "X", "password": "long-enough-password"},
    )
    assert no_token.status_code == 400


def test_logout_ends_the_session(app, client, world):
    login(client, world.emails["owner"])
    token = csrf_token(client, "/dashboard")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/dashboard").status_code == 302
    assert "logout" in _actions(app)


def test_deactivated_account_loses_its_session(app, client, world):
    login(client, world.emails["researcher"])
    assert client.get("/dashboard").status_code == 200
    with app.extensions["myovault"].db.transaction() as session:
        user = session.scalar(select(User).where(User.email == world.emails["researcher"]))
        user.is_active = False
    assert client.get("/dashboard").status_code == 302


def test_login_redirect_only_to_local_paths(client, world):
    token = csrf_token(client)
    response = client.post(
        "/login",
        data={
            "email": world.emails["owner"],
            "password": PASSWORD,
            "csrf_token": token,
            "next": "//evil.example/x",
        },
    )
    assert response.headers["Location"].endswith("/dashboard")


def test_passwords_are_stored_as_argon2_hashes(app, world):
    with app.extensions["myovault"].db.transaction() as session:
        hashes = session.scalars(select(User.password_hash)).all()
    assert all(h.startswith("$argon2id$") for h in hashes)
    assert not any(PASSWORD in h for h in hashes)
