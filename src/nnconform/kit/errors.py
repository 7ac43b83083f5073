"""Errors shared by every criterion's payloads and artifacts."""

from __future__ import annotations


class PayloadError(ValueError):
    """A payload (update, feature, artifact) is malformed, truncated, damaged or not for this decoder; the
    message names the payload and the problem."""
