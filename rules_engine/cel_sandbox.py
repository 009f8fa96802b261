"""Run compiled CEL programs, in this process or in a helper process that can be killed.

The CEL library (``common-expression-language``, Rust) has no cost limit, holds
the GIL for the whole evaluation and never checks for signals, so nothing in
this process can stop an evaluation once it has started: a tenant's
``list.all(x, list.all(y, list.all(z, ...)))`` would hold a worker for hours.
Programs whose cost ``rules_engine.cel`` can not bound before running them are
therefore evaluated here, in a helper process with a wall-clock deadline and
an address-space limit. On a timeout the helper is killed and the next
evaluation starts a new one.

The helper is this module run as ``python -I -m rules_engine.cel_sandbox``.
It imports nothing of Herald (not Django either), so it starts in about a
third of a second, and it exits when its parent does.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import cel

_HEADER = struct.Struct("!I")
_MAX_FRAME = 256 * 1024 * 1024
_STARTUP_SECONDS = 30.0
_PROGRAMS_KEPT = 512  # compiled programs the helper keeps, by source
_SCALARS = (bool, int, float, str, bytes, type(None))


class Failure(Exception):
    """An evaluation failed; ``message`` is short and fit to show a tenant."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- Running a program ---------------------------------------------------------


def execute(program: cel.Program, context: cel.Context) -> Any:
    """Run ``program`` against ``context``; plain Python values, or ``Failure``."""
    try:
        return plain(program.execute(context))
    except Exception as error:
        raise Failure(describe(error)) from None
    except BaseException as error:
        # A Rust panic arrives as pyo3's PanicException, a BaseException.
        if not is_panic(error):
            raise
        raise Failure("the expression could not be evaluated (internal error in CEL)") from None


def is_panic(error: BaseException) -> bool:
    return type(error).__name__ == "PanicException"


def plain(value: Any) -> Any:
    """The value without library types (an optional becomes its value or None)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, cel.OptionalValue):
        return plain(value.value()) if value.has_value() else None
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    return value  # datetime, timedelta


def describe(error: Exception) -> str:
    """A short message for an exception the library raised during evaluation."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else "?"
        return f"no such key: {key}"
    if isinstance(error, ZeroDivisionError):
        return "division by zero"
    if isinstance(error, RuntimeError) and first.startswith("Undefined variable or function: "):
        name = first.split("'")[1] if first.count("'") >= 2 else "?"
        return f"unknown variable or function '{name}' (or wrong number of arguments)"
    if isinstance(error, TypeError) and first.startswith("No such overload"):
        return (
            "no such overload: the operation is not defined for these operand types "
            "(CEL does not convert between int, uint, double and string by itself)"
        )
    if len(first) > 200:
        first = first[:197] + "..."
    return first


# --- The parent's side ------------------------------------------------------------------


class Sandbox:
    """One helper process, used by one thread at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._context_token: int | None = None  # the activation the helper holds

    def evaluate(
        self,
        *,
        source: str,
        token: int,
        variables: bytes,
        timeout: float,
        memory_bytes: int,
    ) -> Any:
        """Evaluate ``source`` against the pickled ``variables`` within ``timeout`` seconds.

        ``token`` names the activation: the helper keeps the last one it was
        sent, so evaluating several programs against one activation sends the
        variables once.
        """
        with self._lock:
            process = self._running(memory_bytes)
            resend = self._context_token != token
            request = pickle.dumps((source, token, variables if resend else None))
            deadline = time.monotonic() + timeout
            try:
                _write_frame(process, request)
                self._context_token = token
                ok, value = pickle.loads(_read_frame(process, deadline))  # noqa: S301 - our helper
            except TimeoutError:
                self.stop()
                raise Failure(
                    f"evaluation took longer than {timeout * 1000:.0f} ms and was stopped"
                ) from None
            except (OSError, EOFError, pickle.UnpicklingError):
                status = self.stop()
                raise Failure(_death_message(status)) from None
            if not ok:
                raise Failure(value)
            return value

    def stop(self) -> int | None:
        """Kill the helper (if any); its exit status."""
        process, self._process = self._process, None
        self._context_token = None
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        status = process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        return status

    def forget(self) -> None:
        """Drop the helper without touching it (it belongs to the parent of a fork)."""
        self._process = None
        self._context_token = None
        self._lock = threading.Lock()

    def _running(self, memory_bytes: int) -> subprocess.Popen[bytes]:
        process = self._process
        if process is not None and process.poll() is None:
            return process
        if process is not None:
            self.stop()
        environment = {**os.environ, "RUST_BACKTRACE": "0"}
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-I", "-m", "rules_engine.cel_sandbox", str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
            bufsize=0,
            close_fds=True,
        )
        self._process = process
        self._context_token = None
        try:
            _read_frame(process, time.monotonic() + _STARTUP_SECONDS)
        except (TimeoutError, OSError, EOFError):
            status = self.stop()
            raise Failure(f"the CEL helper process did not start (status {status})") from None
        return process


def _death_message(status: int | None) -> str:
    if status == -signal.SIGABRT:
        # Rust aborts when an allocation fails under the address-space limit.
        return "evaluation was stopped: it needed more memory than allowed"
    return "evaluation was stopped: the CEL helper process ended unexpectedly"


def _write_frame(process: subprocess.Popen[bytes], payload: bytes) -> None:
    if process.stdin is None:
        raise OSError("the helper has no stdin")
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    fd = process.stdin.fileno()
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_frame(process: subprocess.Popen[bytes], deadline: float) -> bytes:
    if process.stdout is None:
        raise OSError("the helper has no stdout")
    fd = process.stdout.fileno()
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    if size > _MAX_FRAME:
        raise EOFError("frame too large")
    return _read_exactly(fd, size, deadline)


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    missing = size
    while missing:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(missing, 1 << 20))
        if not chunk:
            raise EOFError("the helper closed its pipe")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


_SANDBOX = Sandbox()
os.register_at_fork(after_in_child=_SANDBOX.forget)


def sandbox() -> Sandbox:
    """This process's sandbox (a forked child gets a new one)."""
    return _SANDBOX


# --- The helper's side ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent exits, even mid-evaluation."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def main(memory_bytes: int) -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent exited before prctl took effect
        return
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Keep the protocol on a private descriptor: stray prints go to stderr.
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    programs: collections.OrderedDict[str, cel.Program] = collections.OrderedDict()
    context_token: int | None = None
    context = cel.Context()

    def send(payload: object) -> None:
        data = pickle.dumps(payload)
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            view = view[os.write(protocol_out, view) :]

    send((True, "ready"))
    while True:
        try:
            (size,) = _HEADER.unpack(_read_exactly(0, _HEADER.size, None))
            source, token, variables = pickle.loads(_read_exactly(0, size, None))  # noqa: S301
        except EOFError:
            return  # the parent closed the pipe
        try:
            if variables is not None:
                context_token = None
                context = cel.Context(pickle.loads(variables))  # noqa: S301 - from our parent
                context_token = token
            elif token != context_token:
                raise Failure("the CEL helper lost the variables (internal error)")
            send((True, execute(_program(programs, source), context)))
        except Failure as failure:
            send((False, failure.message))
        except Exception as error:
            send((False, describe(error)))


def _program(programs: collections.OrderedDict[str, cel.Program], source: str) -> cel.Program:
    program = programs.get(source)
    if program is None:
        # The parent compiled and checked this source before it sent it.
        program = cel.compile(source)
        programs[source] = program
        while len(programs) > _PROGRAMS_KEPT:
            programs.popitem(last=False)
    else:
        programs.move_to_end(source)
    return program


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
