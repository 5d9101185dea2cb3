"""Preview worker: renders tutorial previews in the background on RQ workers."""

from __future__ import annotations

from preview_worker.schema import Problem, validate_payload

__all__ = ["Problem", "validate_payload"]
