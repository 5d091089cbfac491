"""The video library: every rendered video, whose it is, what made it, and its share links.

The worker records a video when its render finishes, before the bot hears of it, so a
teacher who asks for "videos" on seeing the result finds it listed. A video is keyed by its
folder, so a render that runs twice (a worker killed and the job run again) leaves one
entry. Records live in Redis with the rest of the state; the files stay in the media root.
"""

from __future__ import annotations

import time

import redis
from pydantic import BaseModel, Field, ValidationError

from engine.settings import Settings
from engine.share import is_revoked, public_base, share_url, token_of, verify

PREFIX = "lessonreel:library:"
LINKS_KEPT = 20  # per video: the newest links made, for "videos" to show one still valid


class ShareRecord(BaseModel):
    url: str
    made_at: float
    expires_at: float


class VideoRecord(BaseModel):
    video: str  # the folder in the media root, which is the job id
    owner: str = ""  # "slack:U123"; empty for the demo
    conversation: str = ""  # the thread and the storyboard generation in it
    version: int = 1  # the storyboard version rendered
    title: str = ""
    language: str = "en"
    preset: str = ""  # "animatic" or the diffusion preset's name
    preview: bool = False
    seconds: float = 0.0  # the video's length
    rendered_at: float = Field(default_factory=time.time)
    files: list[str] = Field(default_factory=list)  # names inside the folder


class Library:
    def __init__(self, connection: redis.Redis) -> None:
        self.redis = connection

    def record(self, video: VideoRecord) -> None:
        """Add or replace a video: recording the same video again keeps one entry."""
        with self.redis.pipeline() as pipe:
            pipe.set(f"{PREFIX}video:{video.video}", video.model_dump_json())
            pipe.zadd(f"{PREFIX}owner:{video.owner}", {video.video: video.rendered_at})
            pipe.zadd(f"{PREFIX}all", {video.video: video.rendered_at})
            pipe.execute()

    def get(self, video: str) -> VideoRecord | None:
        raw = self.redis.get(f"{PREFIX}video:{video}")
        if raw is None:
            return None
        try:
            return VideoRecord.model_validate_json(raw)
        except ValidationError:  # written by a newer or broken version: not a crash here
            return None

    def of_owner(self, owner: str, limit: int = 20) -> list[VideoRecord]:
        """The owner's videos, newest first."""
        return self._records(self.redis.zrevrange(f"{PREFIX}owner:{owner}", 0, limit - 1))

    def recent(self, limit: int = 20) -> list[VideoRecord]:
        """Everyone's videos, newest first (for admins)."""
        return self._records(self.redis.zrevrange(f"{PREFIX}all", 0, limit - 1))

    def add_link(self, video: str, url: str, expires_at: float, *,
                 now: float | None = None) -> None:
        share = ShareRecord(url=url, made_at=time.time() if now is None else now,
                            expires_at=expires_at)
        key = f"{PREFIX}links:{video}"
        with self.redis.pipeline() as pipe:
            pipe.lpush(key, share.model_dump_json())
            pipe.ltrim(key, 0, LINKS_KEPT - 1)
            pipe.execute()

    def links(self, video: str) -> list[ShareRecord]:
        """The links made to a video, newest first."""
        return [ShareRecord.model_validate_json(raw)
                for raw in self.redis.lrange(f"{PREFIX}links:{video}", 0, LINKS_KEPT - 1)]

    def _records(self, ids: list[bytes]) -> list[VideoRecord]:
        found = (self.get(raw.decode()) for raw in ids)
        return [video for video in found if video is not None]


REUSE_MIN_SECONDS = 86_400  # a link this close to its end is not handed out again


def link_to(library: Library, settings: Settings, secret: bytes, video: str, *,
            reuse: bool = True) -> str:
    """A share link to `video`, recorded in the library: with `reuse`, the newest one made
    that still opens for a day or more; else (or when there is none) a new one."""
    now = time.time()
    base = public_base(settings) + "/v/"
    if reuse:
        for made in library.links(video):
            link = verify(secret, token_of(made.url), now=now)
            if link is not None and link.folder == video and made.url.startswith(base) and \
                    link.expires_at - now >= REUSE_MIN_SECONDS and not is_revoked(settings, link):
                return made.url  # (a link on an old public address is not handed out again)
    url = share_url(settings, secret, video, now=now)
    link = verify(secret, token_of(url), now=now)
    library.add_link(video, url, float(link.expires_at if link else now), now=now)
    return url
