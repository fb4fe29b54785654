"""meta1's event loop: ``selectors``-based, callbacks only, no asyncio.

``loop`` (timers, readiness, thread wake-ups, signals), ``connection`` (buffered
connections with backpressure, listeners, socket helpers) and ``workers`` (blocking work
in threads, group commit). ``spec/eventloop.md`` describes how they fit together.
"""

from __future__ import annotations

from meta1.eventloop.connection import (
    Connection, Listener, PendingConnect, Protocol, connect_stream, connect_unix, listen_tcp, listen_unix,
)
from meta1.eventloop.loop import Alarm, EventLoop, Timer
from meta1.eventloop.workers import GroupCommit, WorkerPool

__all__ = [
    "Alarm", "Connection", "EventLoop", "GroupCommit", "Listener", "PendingConnect", "Protocol", "Timer",
    "WorkerPool", "connect_stream", "connect_unix", "listen_tcp", "listen_unix",
]
