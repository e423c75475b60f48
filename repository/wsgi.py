"""WSGI entry point for production servers: ``gunicorn repository.wsgi:app``."""

from repository import create_app

app = create_app()
