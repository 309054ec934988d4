"""Worker processes started from Python (the replay, benchmarks and tests), stopped by their pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from prerank.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings, **extra: object) -> dict[str, str]:
    """Environment variables that make a child process read the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRERANK_")}
    flat: dict[str, object] = {}
    for section in ("kafka", "redis", "topics", "model", "worker", "stack"):
        for key, value in getattr(settings, section).model_dump(mode="python").items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            flat[f"{section.upper()}__{key.upper()}"] = value
    flat.update(extra)
    env.update({f"PRERANK_{key}": str(value) for key, value in flat.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    """A ``prerank worker`` child process; stopped by its own pid only."""

    def __init__(self, settings: Settings, agents: str, log_path: Path, index: int = 0, **env: object) -> None:
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prerank.cli", "worker", "--agents", agents, "--index", str(index)],
            env=settings_env(settings, **env), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

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
