"""Nothing of ours keeps running after a command fails or is killed.

- ``stack up`` is all or nothing: a prerequisite that fails stops it before anything starts; a
  service that fails to start makes it stop what this call started.
- ``prerank replay`` stopped with SIGTERM stops its workers as Ctrl-C does; killed with SIGKILL,
  its workers notice they lost their parent and stop by themselves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.ports import free_port
from core.processes import REPO, settings_env
from prerank import stack
from prerank.exceptions import ServiceStartError

pytestmark = pytest.mark.integration


def processes_in(folder: Path) -> list[int]:
    """Pids of live processes whose working directory is inside ``folder`` (how the stack runs them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(folder) or cwd.startswith(f"{folder}/"):
            found.append(int(entry.name))
    return found


def children_running(parent_pid: int, needle: str) -> list[int]:
    """Live, non-zombie processes whose parent is ``parent_pid`` and whose command line holds ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent_pid and state != "Z" and needle in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture()
def own_stack(base_settings, tmp_path):
    """A second local stack on free ports with its own home (the Kafka jars are shared)."""
    data = base_settings.model_dump()
    data["stack"] = {**data["stack"], "home": tmp_path / "stack", "cache": base_settings.stack.cache.resolve(),
                     "kafka_port": free_port(), "kafka_controller_port": free_port(),
                     "redis_port": free_port(), "prometheus_port": free_port(), "start_timeout_s": 60.0}
    data["kafka"] = {**data["kafka"], "bootstrap_servers": f"127.0.0.1:{data['stack']['kafka_port']}"}
    settings = type(base_settings)(**data)
    yield settings
    stack.down(settings)


def test_stack_up_with_a_taken_port_starts_nothing(own_stack):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", own_stack.stack.redis_port))
        taken.listen()
        with pytest.raises(ServiceStartError, match="port .* is taken"):
            stack.up(own_stack, with_prometheus=True)
    assert not any(state["pid"] for state in stack.status(own_stack).values())
    assert processes_in(own_stack.stack.home.resolve()) == []


def test_stack_up_whose_service_fails_to_start_stops_what_it_started(own_stack):
    # Bound but not listening: the port looks free to the pre-flight check, yet Prometheus cannot
    # bind it, so Kafka and Redis are already running when the start fails.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", own_stack.stack.prometheus_port))
        with pytest.raises(ServiceStartError, match="prometheus"):
            stack.up(own_stack, with_prometheus=True)
    assert (own_stack.stack.home / "kafka" / "stdout.log").exists()  # Kafka had been started
    assert not any(state["pid"] for state in stack.status(own_stack).values())
    wait_until(lambda: processes_in(own_stack.stack.home.resolve()) == [], 30, "the stack's processes to exit")


def start_replay(settings, report_dir: Path) -> subprocess.Popen:
    """A synthetic replay paced slowly enough to still be streaming when the test kills it."""
    command = [sys.executable, "-m", "prerank.cli", "replay", "--synthetic", "--mode", "cascade",
               "--max-requests", "400", "--candidates", "100", "--speed", "0.02", "--l1-sweep", "",
               "--cold-start", "--report-dir", str(report_dir)]
    log = (report_dir.parent / "replay.log").open("wb")
    return subprocess.Popen(command, env=settings_env(settings), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def workers_serving(report_dir: Path) -> int:
    """Workers of the replay that have logged their start (past their own start-up checks)."""
    return sum("metrics on :" in log.read_text(errors="replace") for log in report_dir.glob("run-*/*/*.log"))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_replay_leaves_no_worker_running(stack_settings, tmp_path, how):
    replay = start_replay(stack_settings, tmp_path / "report")
    workers: list[int] = []
    try:
        wait_until(lambda: workers_serving(tmp_path / "report") == 3 or replay.poll() is not None,
                   240, "the replay's three workers to run their agents")
        assert replay.poll() is None, (tmp_path / "replay.log").read_text()[-3000:]
        workers = children_running(replay.pid, "prerank.cli worker")
        replay.send_signal(how)
        replay.wait(240)
        if how == signal.SIGTERM:
            # stopped like Ctrl-C: its workers were stopped before it exited, and it says how to resume
            assert replay.returncode == 130
            assert not [pid for pid in workers if alive(pid)]
            assert "--resume" in (tmp_path / "replay.log").read_text()
        else:
            wait_until(lambda: not [pid for pid in workers if alive(pid)], 90, "orphaned workers to stop")
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait(30)
        for pid in workers:  # a failed check must not leave them behind either
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
