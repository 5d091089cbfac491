"""Serve an ASGI app with uvicorn from a daemon thread, on a free port of 127.0.0.1.

The listening socket is bound when the ``LocalServer`` is made, so its ``url`` is known before
the app exists (an app that puts its own address in links, LESSONREEL_PUBLIC_URL, can be built
with it)::

    server = LocalServer(lifespan="on", name="bot")
    server.app = make_app(public_url=server.url)
    with server:
        httpx.get(server.url + "/health")

``start()`` returns once uvicorn serves (and, with ``lifespan="on"``, the app's start-up has
run); ``stop()`` returns within about 2 to 4 s even with connections left open (plus the app's
own shutdown, with ``lifespan="on"``). ``LocalService`` is a base for a stand-in (FakeSlack,
FakeTelegram) that serves its app on one.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal, Self

import uvicorn

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
GRACE_S = 2.0  # uvicorn is asked to stop, and given this long ...
FORCE_S = 2.0  # ... then told to force its way out (open connections), and given this long
LIFESPAN_SHUTDOWN_S = 5.0  # more for an app's own shutdown, which cannot be forced


class LocalServer:
    """``app`` on ``url`` (``http://127.0.0.1:<port>``), served from a thread named ``name``.

    ``app`` may be given later, by setting the attribute before ``start()``. ``lifespan``:
    "off" (the default) or "on", to run the app's start-up and shutdown. A server is started
    once: after ``stop()`` its port is given back; make a new one to serve again.
    """

    def __init__(
        self, app: Any = None, *, lifespan: Literal["off", "on"] = "off",
        name: str = "local-server",
    ) -> None:
        self.app = app
        self.lifespan = lifespan
        self.name = name
        self.host = HOST
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))  # the kernel picks a free port: no race with other tests
        listener.listen(128)
        self._socket: socket.socket | None = listener
        self.port: int = listener.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, no trailing slash."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalServer:
        """Serve, and return once uvicorn has started (RuntimeError if not within ~10 s).
        Starting a running server does nothing."""
        if self._server is not None:
            return self
        if self._socket is None:
            raise RuntimeError(f"{self.name} was stopped: make a new LocalServer")
        if self.app is None:
            raise RuntimeError(f"{self.name} has no app to serve")
        config = uvicorn.Config(
            self.app, loop="asyncio", http="h11", lifespan=self.lifespan, log_level="warning",
            access_log=False, timeout_graceful_shutdown=1, timeout_keep_alive=5,
        )
        server = uvicorn.Server(config)  # off the main thread it installs no signal handlers
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name=self.name, daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:  # with lifespan "on", set once the app's start-up has run
            if not thread.is_alive() or time.monotonic() > deadline:
                self._shut_down()
                raise RuntimeError(f"{self.name}: uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and give the port back; RuntimeError if uvicorn's thread would not
        end. Safe to call more than once, or on a server never started."""
        thread = self._shut_down()
        if thread is not None and thread.is_alive():
            raise RuntimeError(f"{self.name}: uvicorn did not stop")

    def _shut_down(self) -> threading.Thread | None:
        server, thread, listener = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None and thread is not None:
            server.should_exit = True  # open connections get timeout_graceful_shutdown (1 s)
            thread.join(GRACE_S)
            if thread.is_alive():  # a connection or task that would not end: stop waiting
                server.force_exit = True
                thread.join(FORCE_S)
            if thread.is_alive() and self.lifespan == "on":  # the app's shutdown is running
                thread.join(LIFESPAN_SHUTDOWN_S)
        if listener is not None:
            listener.close()
        return thread

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LocalService:
    """Base for a stand-in that serves its app on a ``LocalServer`` kept in ``self._server``:
    ``port``, ``start()``, ``stop()`` and ``with`` go to that server."""

    _server: LocalServer

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
