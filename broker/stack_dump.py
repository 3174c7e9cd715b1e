"""``kill -USR1 <pid>``: a stuck broker writes where every thread and task is, to stderr.

A process that does not exit after SIGTERM, or a call that stops moving, is otherwise a black
box in production: the thread stacks say which blocking call holds a thread (a database
driver's, say), the task stacks which ``await`` never returns. The dump names code locations
only; it holds no locals, so no secret reaches it.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import io
import signal
import sys
import types
from types import FrameType

_loop: asyncio.AbstractEventLoop | None = None
MAX_AWAIT_DEPTH = 40


def install() -> None:
    """Answer SIGUSR1 with a stack dump (thread stacks, then the event loop's tasks)."""
    signal.signal(signal.SIGUSR1, _dump)


def watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Include ``loop``'s tasks in later dumps (the serving loop, once it runs)."""
    global _loop
    _loop = loop


def _dump(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("--- stack dump (SIGUSR1): threads ---\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    loop = _loop
    if loop is None or loop.is_closed():
        sys.stderr.write("--- no event loop running ---\n")
        sys.stderr.flush()
        return
    out = io.StringIO()
    tasks = asyncio.all_tasks(loop)
    out.write(f"--- stack dump: {len(tasks)} task(s) ---\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"task {task.get_name()} {task.get_coro()!r}\n")
        # Task.print_stack shows a suspended coroutine's outermost frame only; the await
        # chain below it is where the wait is.
        _write_chain(out, task.get_coro())
    # A task awaiting inside an async generator (a cleanup context, say) shows only
    # "async_generator_asend": the generator itself is found among the live objects.
    running = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, types.AsyncGeneratorType) and obj.ag_running
    ]
    out.write(f"--- {len(running)} async generator(s) running ---\n")
    for agen in running:
        _write_chain(out, agen)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


def _write_chain(out: io.StringIO, awaited: object) -> None:
    for _ in range(MAX_AWAIT_DEPTH):
        frame = _frame_of(awaited)
        if frame is None:
            out.write(f"    awaiting {type(awaited).__name__}\n")
            return
        code = frame.f_code
        out.write(f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}\n")
        inner = _awaits(awaited)
        if inner is None:
            return
        awaited = inner


def _frame_of(awaitable: object) -> FrameType | None:
    for name in ("cr_frame", "ag_frame", "gi_frame"):
        frame = getattr(awaitable, name, None)
        if isinstance(frame, FrameType):
            return frame
    return None


def _awaits(awaitable: object) -> object | None:
    for name in ("cr_await", "ag_await", "gi_yieldfrom"):
        inner: object = getattr(awaitable, name, None)
        if inner is not None:
            return inner
    return None
