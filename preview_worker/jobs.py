"""The function RQ workers run for a preview job: check, render, store, report."""

from __future__ import annotations

import logging
from typing import Any

from rq import get_current_job

from preview_worker import progress
from preview_worker.retries import InvalidPayload
from preview_worker.schema import validate_payload
from preview_worker.settings import get_settings
from preview_worker.storage import ArtifactStore

log = logging.getLogger(__name__)

# What each stage of a render is called in the job's progress, and how far along it starts.
STAGES = {"html": ("page", 20), "png": ("thumbnail", 55), "write": ("storing", 90)}


def render_preview(payload: dict[str, Any]) -> dict[str, Any]:
    """Render a payload's preview into the artifact store and return what was written."""
    job = get_current_job()
    log.info("rendering the preview of %s", payload.get("tutorialId"))
    progress.begin_attempt(job)
    problems = validate_payload(payload)
    if problems:
        details = "; ".join(f"{each.path or '(root)'}: {each.message}" for each in problems)
        raise InvalidPayload(details[:1000])
    stored = ArtifactStore(get_settings().data_dir).store_preview(
        payload, checkpoint=lambda stage: progress.report(job, *STAGES[stage])
    )
    progress.report(job, "done", 100)
    return stored.as_dict()
