"""WSGI entry point for production servers: ``gunicorn wsgi:app``."""

from core.app import create_app, settle_heap

app = create_app()
settle_heap()
