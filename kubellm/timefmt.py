"""Timestamps the way the Kubernetes API writes them (RFC 3339, UTC, whole seconds), for every kubellm component."""

from __future__ import annotations

import datetime


def now_rfc3339() -> str:
    """The current time as metav1.Time serializes it: ``2026-01-31T12:00:00Z``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
