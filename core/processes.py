"""Worker processes started from Python (the replay, benchmarks and tests), stopped by their pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, SecretStr

from core.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment that makes a child process load exactly ``settings`` (every field, nested by ``__``).

    >>> env = settings_env(Settings(_env_file=None))
    >>> env["PRERANK_WORKER__PUBLISH_INTERVAL_S"], env["PRERANK_MODEL__OUTPUT_DIM"]
    ('2.0', '512')
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PRERANK_")}
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        if not isinstance(section, BaseModel):
            env[f"PRERANK_{section_name.upper()}"] = str(section)
            continue
        for field_name in type(section).model_fields:
            value = getattr(section, field_name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"PRERANK_{section_name.upper()}__{field_name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    return env


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime in clock ticks


class Worker:
    """A ``prerank worker`` child process; stopped by its own pid only."""

    def __init__(self, settings: Settings, agents: str, log_path: Path, index: int = 0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.agents = agents
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prerank.cli", "worker", "--agents", agents, "--index", str(index),
             "--parent-pid", str(os.getpid())],
            env=settings_env(settings, extra_env), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C at the terminal reaches the parent only, which drains the
            # requests in flight before it stops its workers. With --parent-pid the worker stops
            # itself if this process dies first (core.parent_watch).
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process so far (0.0 once it is gone)."""
        try:
            return process_cpu_seconds(self.pid)
        except OSError:
            return 0.0

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Hard crash (SIGKILL): no shutdown hooks run."""
        if self.alive():
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.alive():
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if not self._log.closed:
            self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
