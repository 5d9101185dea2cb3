"""The function RQ workers run for a preview job: check, render, store, report."""

from __future__ import annotations

import logging
from typing import Any

from rq import get_current_job

from preview_worker import progress
from preview_worker.previews import build_preview, limits_of
from preview_worker.render import reuse
from preview_worker.render.limits import Budget
from preview_worker.settings import get_settings
from preview_worker.store import store_for

log = logging.getLogger(__name__)

# What each stage of a render is called in the job's progress, and how far along it starts.
STAGES = {"html": ("page", 20), "png": ("thumbnail", 55), "write": ("storing", 90)}


def render_preview(payload: dict[str, Any]) -> dict[str, Any]:
    """Render a payload's preview into the artifact store and return what was written."""
    job = get_current_job()
    log.info("rendering the preview of %s", payload.get("tutorialId"))
    progress.begin_attempt(job)
    settings = get_settings()
    reuse.configure(settings.render_cache_mb)  # the same bounds every job: a no-op after the first
    stored = build_preview(
        store_for(settings),
        payload,
        checkpoint=lambda stage: progress.report(job, *STAGES[stage]),
        # A stop asked of the job is heard at every token, not only between stages.
        budget=Budget(limits_of(settings), interrupt=lambda: progress.check_stop(job)),
    )
    return stored.as_dict()  # the success hook writes "done" with the job's count
