"""Share links: a signed, expiring, revocable address for one rendered video.

A token is `<payload>.<signature>`, both base64url without padding. The payload is
`<folder>~<expires_at>~<nonce>`: the video's folder inside the media root, the unix second
at which the link stops opening, and 6 random bytes so that two links to the same video
are never alike. The signature is the first 18 bytes of HMAC-SHA256 over the payload under
the share secret, compared in constant time, so nobody can forge a link to another folder
or extend one. Tokens without a nonce (made before links were revocable) still open.

The secret comes from LESSONREEL_SHARE_SECRET; without it (a laptop), a random one is
kept in the data dir, readable only by its owner.

Revocation needs no database: revoking a link adds its id (a digest of its signature, so
the file holds nothing that opens anything) to `.links.json` in the video's own folder,
which the share server reads on every request. Other links to the same video keep
working; entries are dropped once their link would have expired anyway.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import SettingsError, UserError
from engine.settings import Settings

SECRET_ENV = "LESSONREEL_SHARE_SECRET"
SECRET_FILE = "share-secret"
MIN_SECRET_CHARS = 16
DEFAULT_PUBLIC_URL = "http://localhost:8080"
REVOKED_FILE = ".links.json"  # a leading dot: media_file never serves it
_LOCK_FILE = ".links.lock"
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{8}$")
_SIGNATURE_BYTES = 18
_NONCE_BYTES = 6
MAX_TOKEN_CHARS = 400
MAX_LIFETIME_SECONDS = 3650 * 86_400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}

log = logging.getLogger(__name__)


# The export bundle (storyboard, prompts, seeds, every part of a video) is for the teacher,
# not for the students a share link reaches: its links name "<video>.bundle" instead.
BUNDLE_SUFFIX = ".bundle"


@dataclass(frozen=True)
class ShareLink:
    folder: str
    expires_at: int  # unix seconds; the link opens strictly before this second
    link_id: str = ""  # names this one link in the folder's revocation list


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


def sign(secret: bytes, folder: str, expires_at: int, *, nonce: str | None = None) -> str:
    if not _FOLDER.fullmatch(folder):
        raise ValueError(f"not a media folder name: {folder!r}")
    nonce = _b64(secrets.token_bytes(_NONCE_BYTES)) if nonce is None else nonce
    if not _NONCE.fullmatch(nonce):
        raise ValueError(f"not a link nonce: {nonce!r}")
    payload = f"{folder}~{int(expires_at)}~{nonce}".encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, token: str, *, now: float | None = None) -> ShareLink | None:
    """The link a token stands for, or None when it is forged, malformed or expired.

    Pass `now=0` to check only the signature (revoking a link that has already expired).
    Revocation is not checked here: see `is_revoked`.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return None
    encoded, signature = token.split(".")
    try:
        payload = _unb64(encoded)
        given = _unb64(signature)
    except ValueError:
        return None
    mac = _mac(secret, payload)
    if not hmac.compare_digest(given, mac):
        return None
    parts = payload.decode("ascii", "replace").split("~")
    if len(parts) == 2:  # a link made before links carried a nonce
        parts.append("")
    if len(parts) != 3:
        return None
    folder, expires, nonce = parts
    if not _FOLDER.fullmatch(folder) or not expires.isdigit() or len(expires) > 12:
        return None
    if nonce and not _NONCE.fullmatch(nonce):
        return None
    link = ShareLink(folder, int(expires), _link_id(mac))
    if (time.time() if now is None else now) >= link.expires_at:
        return None
    return link


def share_url(settings: Settings, secret: bytes, folder: str, *, now: float | None = None,
              expires_in: int | None = None) -> str:
    """A new link to `folder`, opening for `expires_in` seconds (default: share.link_days)."""
    lifetime = settings.share.link_days * 86_400 if expires_in is None else int(expires_in)
    if not 1 <= lifetime <= MAX_LIFETIME_SECONDS:
        raise ValueError(f"a link lifetime must be 1 s to 3650 days, not {lifetime} s")
    expires_at = int((time.time() if now is None else now) + lifetime)
    return f"{public_base(settings)}/v/{sign(secret, folder, expires_at)}"


def public_base(settings: Settings) -> str:
    return (settings.public_url or DEFAULT_PUBLIC_URL).rstrip("/")


def token_of(link_or_token: str) -> str:
    """The token in a share link (`…/v/<token>`, `…/v/<token>/video.mp4`) or a bare token."""
    text = link_or_token.strip()
    if "/" not in text:
        return text
    parts = urlsplit(text).path.split("/")
    if "v" in parts:
        index = parts.index("v")
        if index + 1 < len(parts):
            return parts[index + 1]
    return ""


def parse_lifetime(text: str) -> int:
    """Seconds in '90m', '2h', '3d', '1w' or '45s'; UserError with one sentence otherwise."""
    match = re.fullmatch(r"\s*(\d{1,7})\s*([smhdw])\s*", text.lower())
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if not 1 <= seconds <= MAX_LIFETIME_SECONDS:
        raise UserError(f"--expires takes a number and a unit, e.g. 90m, 2h or 3d (at most "
                        f"3650d), not {text!r}.")
    return seconds


# -- files and revocation ----------------------------------------------------------------


def video_folder(settings: Settings, folder: str) -> Path | None:
    """A video's folder, strictly inside the media root and not a symlink, or None."""
    if not isinstance(folder, str) or not _FOLDER.fullmatch(folder):
        return None
    root = settings.media_path.resolve()
    path = root / folder
    try:
        if path.is_symlink() or not path.is_dir() or path.resolve() != path:
            return None
    except (OSError, ValueError):
        return None
    return path


def media_file(settings: Settings, folder: str, name: str) -> Path | None:
    """A file of a shared folder, resolved strictly inside the media root, or None.

    Both names must be plain (letters, digits, '.', '_', '-', not starting with a dot) and
    no symlink is followed: the file's real path must be exactly root/folder/name.
    """
    if not isinstance(name, str) or not _FOLDER.fullmatch(name):
        return None
    directory = video_folder(settings, folder)
    if directory is None:
        return None
    path = directory / name
    try:
        if path.is_symlink() or path.resolve() != path or not path.is_file():
            return None
    except (OSError, ValueError):
        return None
    return path


def is_revoked(settings: Settings, link: ShareLink) -> bool:
    """Whether this link was revoked. A damaged revocation file revokes every link to the
    video (fail closed) until someone fixes or deletes it."""
    directory = video_folder(settings, link.folder)
    if directory is None:
        return False  # nothing to open anyway
    try:
        revoked = _read_revoked(directory)
    except ValueError:
        log.warning("%s in %s is damaged; no link to this video opens until it is fixed",
                    REVOKED_FILE, directory)
        return True
    return link.link_id in revoked


def revoke(settings: Settings, link: ShareLink, *, now: float | None = None) -> bool:
    """Revoke one link; False when it was revoked already. UserError for an unknown video."""
    directory = video_folder(settings, link.folder)
    if directory is None:
        raise UserError(f"There is no video {link.folder!r} in {settings.media_path}.")
    now = time.time() if now is None else now
    with _locked(directory):
        try:
            revoked = _read_revoked(directory)
        except ValueError:
            revoked = {}  # rewritten whole below; the damaged file blocked every link anyway
        if link.link_id in revoked:
            return False
        revoked = {key: value for key, value in revoked.items() if value > now}
        revoked[link.link_id] = link.expires_at
        partial = directory / f".links.{secrets.token_hex(4)}"
        partial.write_text(json.dumps({"revoked": revoked}, indent=1, sort_keys=True) + "\n",
                           encoding="utf-8")
        os.replace(partial, directory / REVOKED_FILE)
    return True


def _read_revoked(directory: Path) -> dict[str, int]:
    try:
        text = (directory / REVOKED_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from exc
    data = json.loads(text)  # JSONDecodeError is a ValueError
    revoked = data.get("revoked") if isinstance(data, dict) else None
    if not isinstance(revoked, dict) or not all(
            isinstance(key, str) and isinstance(value, int) for key, value in revoked.items()):
        raise ValueError("not a revocation list")
    return revoked


@contextlib.contextmanager
def _locked(directory: Path):
    """One revoker at a time per video (read, add, write back)."""
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _link_id(mac: bytes) -> str:
    return _b64(hashlib.sha256(b"lessonreel-link-id:" + mac).digest()[:9])


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,300}", text):
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise ValueError("not base64url") from None
    if _b64(data) != text:  # one spelling per value: a changed character is a changed token
        raise ValueError("not canonical base64url")
    return data
