"""Share links: a signed, expiring address for one rendered video.

A link names a folder inside the media root and the time it stops opening, signed with
HMAC-SHA256 under the share secret, so nobody can forge a link to another folder or extend
one. The secret comes from LESSONREEL_SHARE_SECRET; without it (a laptop), a random one is
kept in the data dir, readable only by its owner.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import SettingsError
from engine.settings import Settings

SECRET_ENV = "LESSONREEL_SHARE_SECRET"
SECRET_FILE = "share-secret"
MIN_SECRET_CHARS = 16
DEFAULT_PUBLIC_URL = "http://localhost:8080"
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SIGNATURE_BYTES = 18


@dataclass(frozen=True)
class ShareLink:
    folder: str
    expires_at: int  # unix seconds


def share_secret(settings: Settings, environ: Mapping[str, str] | None = None) -> bytes:
    environ = os.environ if environ is None else environ
    value = environ.get(SECRET_ENV, "")
    if value:
        if len(value) < MIN_SECRET_CHARS:
            raise SettingsError(f"{SECRET_ENV} must be at least {MIN_SECRET_CHARS} characters "
                                f"long; generate one with 'openssl rand -hex 32'.")
        return value.encode()
    path = settings.data_path / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then linked into place: a second process starting
        # at the same moment reads either no file or the complete secret, never a part.
        partial = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(4)}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(partial, path)
        except FileExistsError:
            pass  # the other process won; use its secret
        finally:
            partial.unlink()
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_CHARS:
        raise SettingsError(f"The share secret in {path} is damaged (too short); delete the "
                            "file to make a new one (existing share links stop opening), or "
                            f"set {SECRET_ENV}.")
    return secret


def sign(secret: bytes, folder: str, expires_at: int) -> str:
    if not _FOLDER.fullmatch(folder):
        raise ValueError(f"not a media folder name: {folder!r}")
    payload = f"{folder}~{expires_at}".encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, token: str, *, now: float | None = None) -> ShareLink | None:
    """The link a token stands for, or None when it is forged, malformed or expired."""
    if len(token) > 400 or token.count(".") != 1:
        return None
    encoded, signature = token.split(".")
    try:
        payload = _unb64(encoded)
        given = _unb64(signature)
    except ValueError:
        return None
    if not hmac.compare_digest(given, _mac(secret, payload)):
        return None
    folder, _, expires = payload.decode("ascii", "replace").rpartition("~")
    if not _FOLDER.fullmatch(folder) or not expires.isdigit():
        return None
    link = ShareLink(folder, int(expires))
    if link.expires_at < (time.time() if now is None else now):
        return None
    return link


def share_url(settings: Settings, secret: bytes, folder: str, *, now: float | None = None) -> str:
    expires_at = int((time.time() if now is None else now) + settings.share.link_days * 86_400)
    base = (settings.public_url or DEFAULT_PUBLIC_URL).rstrip("/")
    return f"{base}/v/{sign(secret, folder, expires_at)}"


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,300}", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def media_file(settings: Settings, folder: str, name: str) -> Path | None:
    """A file of a shared folder, resolved strictly inside the media root, or None."""
    root = settings.media_path.resolve()
    if not _FOLDER.fullmatch(folder) or not _FOLDER.fullmatch(name):
        return None
    path = (root / folder / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path
