"""Optional signatures on what decides which model runs: key notes, aliases, run records,
judgements and promotion log entries.

Anyone who can write to a shared store can write any of these files. With a team key
configured (`DISTILLERY_SIGNING_KEY`, or a file named by `DISTILLERY_SIGNING_KEY_FILE`),
each carries an HMAC-SHA256 over its canonical JSON and over what it is (`what`: the
alias name, the cache key, "run", "judgement", the log entry's place), so a signed object
cannot be forged, altered, or copied to another place; readers refuse one whose signature
is missing or wrong. Whoever holds the key can promote, so a team limits who may promote
by who gets the key. Without a key, nothing is signed or checked, as before.

Content-addressed artifacts need no signature: their names are their checksums. What
signing adds is trust in the pointers to them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from artifacts.names import StoreError

KEY_ENV = "DISTILLERY_SIGNING_KEY"
KEY_FILE_ENV = "DISTILLERY_SIGNING_KEY_FILE"
FIELD = "signature"
SCHEME = "hmac-sha256:"
MIN_KEY_BYTES = 16


class SignatureError(StoreError):
    """A signed object's signature is missing or wrong while a team key is configured."""


def team_key() -> bytes | None:
    """The configured key, or None (signing off). A key that is too short is refused."""
    raw = os.environ.get(KEY_ENV, "")
    source = KEY_ENV
    if not raw and os.environ.get(KEY_FILE_ENV):
        source = os.environ[KEY_FILE_ENV]
        try:
            raw = Path(source).read_text().strip()
        except OSError as exc:
            raise StoreError(f"{KEY_FILE_ENV}={source}: the key file cannot be read ({exc}); fix the path or unset it") from None
    if not raw:
        return None
    key = raw.encode()
    if len(key) < MIN_KEY_BYTES:
        raise StoreError(f"the signing key from {source} is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                         f"(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    return key


def _mac(key: bytes, payload: dict, what: str) -> str:
    body = json.dumps({"what": what, "payload": payload}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return SCHEME + hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def sign(payload: dict, what: str) -> dict:
    """`payload` with its signature added when a key is configured; unchanged otherwise."""
    key = team_key()
    unsigned = {k: v for k, v in payload.items() if k != FIELD}
    return unsigned if key is None else {**unsigned, FIELD: _mac(key, unsigned, what)}


def checked(payload: Any, what: str, where: str) -> Any:
    """`payload` without its signature, after checking it when a key is configured.

    `where` names the object in the error (a path, an alias), so the message says what to fix."""
    key = team_key()
    if not isinstance(payload, dict):
        return payload
    unsigned = {k: v for k, v in payload.items() if k != FIELD}
    if key is None:
        return unsigned
    signature = payload.get(FIELD)
    if not isinstance(signature, str) or not signature:
        raise SignatureError(f"{where} is not signed, and this machine requires signatures ({KEY_ENV} or {KEY_FILE_ENV} "
                             f"is set): it was written without the team key, or by someone who does not hold it. "
                             f"Rewrite it with the key (rerun or re-promote), or unset the key to trust unsigned objects")
    if not hmac.compare_digest(signature, _mac(key, unsigned, what)):
        raise SignatureError(f"{where} has a wrong signature: it was altered, forged, copied from elsewhere, or signed "
                             f"with another key. Do not use it; rewrite it with the team key (rerun or re-promote)")
    return unsigned
