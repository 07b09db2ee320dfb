"""The web dashboard: static pages at `/` (no build step, nothing fetched from outside) and the
JSON they read under `/dashboard/api/`, with the same API keys as /v1."""

from .api import mount_dashboard

__all__ = ["mount_dashboard"]
