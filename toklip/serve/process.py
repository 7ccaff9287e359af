"""``ServerProcess``: run ``toklip serve`` as a child process on a free loopback port and stop it cleanly.

For tests, benchmarks and notebooks. It reads the server's own "listening on" / "ready" lines instead of
polling, and always ends the child it started (SIGTERM, then SIGKILL after a bounded wait).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType

LISTENING = "toklip serve: listening on "
READY = "toklip serve: ready on "


class ServerProcess:
    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 180.0,
        python: str = sys.executable,
    ) -> None:
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.python = python
        self.url: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._lines: deque[str] = deque(maxlen=2000)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        """The last lines the server printed (stdout and stderr)."""
        return "".join(self._lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> ServerProcess:
        cmd = [self.python, "-m", "toklip", "serve", "--host", "127.0.0.1", "--port", "0", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, env=self.env)
        self._reader = threading.Thread(target=self._read, name="toklip-serve-reader", daemon=True)
        self._reader.start()
        if not self._ready.wait(self.ready_timeout_s) or self.url is None or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"toklip serve did not become ready within {self.ready_timeout_s:g} s; "
                               f"its output:\n{self.output}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:  # keeps draining, so the child never blocks on a full pipe
            self._lines.append(line)
            if line.startswith(LISTENING):
                self.url = line[len(LISTENING):].split()[0]
            elif line.startswith(READY):
                self._ready.set()
        self._ready.set()  # EOF: the process ended; start() reports it

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout_s)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), SIGKILL if it has not exited after ``timeout_s``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
