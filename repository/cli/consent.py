"""``myovault access-reminders``: remind committees of overdue requests, escalate to owners.

Run it daily (cron, a Kubernetes CronJob or Celery beat); it is idempotent.
"""

from __future__ import annotations

import click

from repository.cli import _app


@click.command("access-reminders")
def access_reminders() -> None:
    """Remind committees of access requests past their deadline; escalate to project owners."""
    from repository.services import access

    with _app() as app, app.extensions["myovault"].db.transaction() as session:
        counts = access.process_overdue(session)
    click.echo(f"reminded: {counts['reminded']}, escalated: {counts['escalated']}")
