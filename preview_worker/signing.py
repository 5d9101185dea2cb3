"""Signed, expiring artifact URLs: whoever holds one may fetch that one file until it expires."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeTimedSerializer

from preview_worker.settings import Settings

SALT = "preview-artifact"
EVENTS_SALT = "preview-events"  # a job's event stream: a token for one never opens the other
# Where the HTTP API is mounted; an artifact's URL is a path under it, the same for every face.
API_PREFIX = "/api/preview"
DEVELOPMENT_SIGNING_KEY = "development-only-signing-key"  # noqa: S105 - refused in production


class ArtifactSigner:
    """Signs and checks the token that grants access to one artifact file."""

    def __init__(self, key: str, max_age: int) -> None:
        self.serializer = URLSafeTimedSerializer(key, salt=SALT)
        self.events = URLSafeTimedSerializer(key, salt=EVENTS_SALT)
        self.max_age = max_age  # seconds a token works

    def __repr__(self) -> str:
        """Show how long tokens work, never the key."""
        return f"ArtifactSigner(max_age={self.max_age})"

    def token(self, digest: str, name: str) -> str:
        """Return a token for one artifact file."""
        return str(self.serializer.dumps(f"{digest}/{name}"))

    def url(self, digest: str, name: str) -> str:
        """Return the signed path of one artifact, as the API serves it."""
        query = urlencode({"token": self.token(digest, name)})
        return f"{API_PREFIX}/artifacts/{digest}/{name}?{query}"

    def allows(self, token: str, digest: str, name: str) -> bool:
        """Tell whether a token is genuine, unexpired and for this very file."""
        try:
            granted = self.serializer.loads(token, max_age=self.max_age)
        except BadSignature:  # altered, for another key, or expired (SignatureExpired)
            return False
        return bool(granted == f"{digest}/{name}")


    def events_url(self, job_id: str) -> str:
        """Return the signed path of a job's event stream: a browser's EventSource cannot
        send an Authorization header."""
        query = urlencode({"token": self.events.dumps(job_id)})
        return f"{API_PREFIX}/job/{job_id}/events?{query}"

    def allows_events(self, token: str, job_id: str) -> bool:
        """Tell whether a token is genuine, unexpired and for this job's event stream."""
        try:
            granted = self.events.loads(token, max_age=self.max_age)
        except BadSignature:
            return False
        return bool(granted == job_id)


def link_artifacts(status: dict[str, Any], signer: ArtifactSigner, base: str = "") -> None:
    """Add the signed URL of each artifact to a finished job's status (base: scheme and host)."""
    result = status.get("result")
    if isinstance(result, dict) and not result.get("dryRun"):
        for artifact in result.get("artifacts", []):
            artifact["url"] = base + signer.url(result["artifactHash"], artifact["name"])


def signer_for(settings: Settings) -> ArtifactSigner:
    """Return the signer of artifact URLs the settings call for."""
    key = settings.signing_key or DEVELOPMENT_SIGNING_KEY
    return ArtifactSigner(key, settings.artifact_url_ttl)
