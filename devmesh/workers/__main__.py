"""A worker process: `python -m devmesh.workers NAME FACTORY PARENT_PID CONN_FD [SOCKET_FD...]`.

The parent starts it with `subprocess` (a fresh interpreter: the `spawn` start method without
multiprocessing's resource tracker) and passes the pipe and any listening sockets as fds.
"""

from __future__ import annotations

import socket
import sys
from multiprocessing.connection import Connection

from devmesh.workers.base import worker_main


def main(argv: list[str]) -> None:
    """Wrap the inherited fds and run the worker."""
    name, factory, parent_pid, conn_fd, *socket_fds = argv
    conn = Connection(int(conn_fd))
    sockets = [socket.socket(fileno=int(fd)) for fd in socket_fds]
    worker_main(name, conn, sockets, int(parent_pid), factory)


if __name__ == "__main__":
    main(sys.argv[1:])
