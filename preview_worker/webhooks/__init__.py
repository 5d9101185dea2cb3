"""Webhooks: a job's end, signed and POSTed to the URL its payload names, retried on failure.

Receivers in Python check a request with verify(secret, header, body, tolerance).
"""

from __future__ import annotations

from preview_worker.webhooks.signature import HEADER, TOLERANCE, sign, verify

__all__ = ["HEADER", "TOLERANCE", "sign", "verify"]
