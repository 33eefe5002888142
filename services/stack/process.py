"""Background processes of the local stack, tracked by pid file so ``argus stack down``
stops exactly what ``up`` started (and nothing else)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """The local stack cannot start or stop; the message says what to do."""


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    pidfile: Path
    log: Path

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # a zombie (exited, not yet reaped) is not alive
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, IndexError):
            return True

    def spawn(self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> int:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout_s: float = 30.0, group: bool = False) -> bool:
        """SIGTERM, wait, then SIGKILL. Returns True if a process was stopped. With
        ``group``, the signals go to its process group (it was started as a session
        leader), and what is left of the group after it exited is killed too (e.g. Ray's
        workers of the inference service)."""
        pid = self.pid()
        if pid is None or not self.alive():
            self.pidfile.unlink(missing_ok=True)
            if group and pid is not None:
                _killpg(pid, signal.SIGKILL)
            return False
        (_killpg if group else os.kill)(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            _reap(pid)
            time.sleep(0.1)
        if self.alive():
            (_killpg if group else os.kill)(pid, signal.SIGKILL)
            while self.alive():
                _reap(pid)
                time.sleep(0.05)
        _reap(pid)
        if group:
            _killpg(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        return True

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
