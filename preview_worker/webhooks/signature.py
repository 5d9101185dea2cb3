"""The Preview-Signature header: an HMAC-SHA256 of "<t>.<body>", made per attempt, checked.

`Preview-Signature: t=<unix seconds>,v1=<hex digest>`. A receiver recomputes the digest over
the body bytes exactly as received, compares in constant time, and refuses a timestamp
outside its tolerance, so a captured request cannot be replayed later. Several v1 values
may come (while a secret is being changed); any one that matches will do.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

HEADER = "Preview-Signature"
TOLERANCE = 300  # seconds a signature stays acceptable, either way of the receiver's clock
MAX_HEADER = 4096  # characters of a header looked at; a longer one is refused unread
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest(secret: str, timestamp: int, body: bytes) -> str:
    """Return the hex HMAC-SHA256, keyed by the secret, of "<timestamp>.<body>"."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """Return the Preview-Signature header's value for a body, signed now (or at timestamp)."""
    moment = int(time.time()) if timestamp is None else timestamp
    return f"t={moment},v1={digest(secret, moment, body)}"


def _parse(header: str) -> tuple[int, list[str]] | None:
    """Read t and the v1 digests of a header; None when it is not one."""
    if len(header) > MAX_HEADER:
        return None
    timestamps, digests = [], []
    for part in header.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals:
            return None
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            digests.append(value.lower())
        # Other schemes (a later v2) are skipped: a receiver that knows v1 still verifies.
    if len(timestamps) != 1 or not _TIMESTAMP.match(timestamps[0]):
        return None
    return int(timestamps[0]), [each for each in digests if _DIGEST.match(each)]


def verify(
    secret: str,
    header: str,
    body: bytes | str,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> bool:
    """Tell whether a Preview-Signature header signs these body bytes with the secret, lately.

    body is what arrived, byte for byte (a str is taken as its UTF-8 bytes); tolerance is
    how many seconds the signature's time may be from now, either way.
    """
    parsed = _parse(header)
    if parsed is None or not secret:
        return False
    timestamp, digests = parsed
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    data = body.encode() if isinstance(body, str) else body
    expected = digest(secret, timestamp, data)
    # Every digest is compared, in constant time each: nothing about a match leaks by timing.
    return bool(sum(hmac.compare_digest(expected, each) for each in digests))
