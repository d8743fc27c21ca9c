"""Running the explorer's ASGI app on uvicorn: in the foreground (the CLI) or on a background thread (Jupyter).

The listening socket is bound here first, so a port in use is one line before anything starts, and ``port=0``
picks a free port whose number is then known.
"""

from __future__ import annotations

import errno
import socket
import threading
import time

from geodino.errors import ConfigError

__all__ = ["bind", "serve", "BackgroundServer"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free port); one line if it cannot be had."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be within 0..65535, got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on host {host!r} ({e.strerror}): give an address such as 127.0.0.1") \
            from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (another server?): choose another with --port, or "
                              "--port 0 for any free port") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def _server(app, log_level: str):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                                         timeout_graceful_shutdown=2))


def serve(app, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM (uvicorn's own signal handling)."""
    _server(app, log_level).run(sockets=[sock])


class BackgroundServer:
    """``app`` served on a daemon thread (uvicorn installs no signal handlers off the main thread)."""

    def __init__(self, app, sock: socket.socket, *, log_level: str = "warning"):
        self.url = url_of(sock)
        self._sock = sock
        self.server = _server(app, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                       name="geodino-explore")
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started and self.thread.is_alive() and time.monotonic() - t0 < 30:
            time.sleep(0.02)
        if not self.server.started:
            raise ConfigError(f"the explorer server did not start on {self.url}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self._sock.close()
