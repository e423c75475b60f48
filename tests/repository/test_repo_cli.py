"""The `myovault` CLI: init, demo, and the science commands registered lazily."""

from __future__ import annotations

import stat

import click
from click.testing import CliRunner

from repository.cli import FEATURE_COMMANDS, main


def test_every_feature_command_resolves():
    ctx = click.Context(main)
    for name in FEATURE_COMMANDS:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command), name


def test_init_creates_private_keys_schema_and_one_admin(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MYOVAULT_HOME", str(home))
    runner = CliRunner()
    first = runner.invoke(main, ["init"])
    assert first.exit_code == 0, first.output
    assert "admin account: admin@myovault.local  password: " in first.output
    key = home / "keys" / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
    again = runner.invoke(main, ["init"])
    assert again.exit_code == 0, again.output
    assert "accounts exist already" in again.output
    verify = runner.invoke(main, ["audit", "verify"])
    assert verify.exit_code == 0 and "audit chain OK" in verify.output


def test_demo_prints_each_role_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MYOVAULT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MYOVAULT_DEMO_COHORT", "none")
    runner = CliRunner()
    first = runner.invoke(main, ["demo", "--no-serve"])
    assert first.exit_code == 0, first.output
    for role in ("admin", "owner", "investigator", "dac_member", "researcher", "grantee"):
        assert f"  {role} " in first.output
    second = runner.invoke(main, ["demo", "--no-serve"])
    assert "demo accounts exist already" in second.output
    assert "demo grant not created" in first.output  # no cohort, nothing to grant


def test_database_unreachable_is_a_clear_cli_error(tmp_path, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("MYOVAULT_HOME", str(tmp_path))
    monkeypatch.setenv("MYOVAULT_DATABASE_URL", f"postgresql://u@127.0.0.1:{free_port()}/x")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "database unreachable" in result.output
