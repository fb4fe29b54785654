"""Handing listen sockets from mcp to smtps (``start_action = pass``, reference §1.3, B72).

The protocol
    smtps, started by mcp, creates the UNIX socket ``pass_fd_socket`` (relative to the
    queue directory, mode 0600), writes ``want-fds`` on its supervision pipe and waits.
    mcp connects and sends one message, the octets ``listen``, with the listen sockets as
    SCM_RIGHTS ancillary data (unix(7)); smtps checks that the sender is root or its own
    user (SO_PEERCRED), takes the descriptors, closes and removes its socket and serves.
    mcp keeps its own copies: a restarted smtps gets the same sockets again, and a
    connection that arrives meanwhile waits in the kernel's backlog instead of being
    refused.

Why a socket and not inheritance
    It is MeTA1's interface (pies documents it for MeTA1-style components), and it keeps
    the descriptor out of every process mcp starts but the one that asked for it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

PASS_MESSAGE = b"listen"
MAX_SOCKETS = 16


def pass_listen_sockets(path: str, sockets: list[socket.socket], timeout: float = 5.0) -> None:
    """mcp's side: connect to ``path`` and send ``sockets`` (OSError on failure)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(timeout)
        channel.connect(path)
        socket.send_fds(channel, [PASS_MESSAGE], [sock.fileno() for sock in sockets])


def receive_listen_sockets(path: str, ask, timeout: float = 30.0) -> list[socket.socket]:
    """smtps's side: create ``path``, call ``ask()`` (which tells mcp), receive the
    sockets (non-blocking). OSError when none come within ``timeout``."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen(1)
        server.settimeout(timeout)
        ask()
        while True:
            channel, _ = server.accept()
            with channel:
                _, uid, _ = struct.unpack("3i", channel.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                   struct.calcsize("3i")))
                if uid not in (0, os.getuid()):
                    continue            # not mcp: ignored
                channel.settimeout(timeout)
                message, fds, _, _ = socket.recv_fds(channel, 64, MAX_SOCKETS)
                sockets = [socket.socket(fileno=fd) for fd in fds]
                if message != PASS_MESSAGE or not sockets:
                    for sock in sockets:
                        sock.close()
                    raise OSError(errno.EPROTO, "no listen socket in mcp's message", path)
                for sock in sockets:
                    sock.setblocking(False)
                return sockets
    finally:
        server.close()
        try:
            os.unlink(path)
        except OSError:
            pass
