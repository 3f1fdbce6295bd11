"""Binding the webhook's port, apart from the server: `observer up` checks its ports with it before
it starts anything (a port in use is a message naming the variable), without importing uvicorn or
the app into a supervisor that only waits on its children."""

from __future__ import annotations

import socket

from observer.errors import PortInUse


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(
            f"cannot listen on {host}:{port} (OBSERVER_HOST/OBSERVER_PORT): {exc.strerror}"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
