"""``prerank worker``: one Faust worker process running a chosen set of agents.

Serving agents (catalog, history, joiner, scorer) share one consumer group, so more
processes with the same agent set split the partitions. The simulated fine ranker of the replay
(``ranker``) and the trainer (with its publisher) run in groups of their own: ``--agents trainer,publisher`` in a second process keeps its CPU
work away from the scorer's latency. Every worker serves ``/metrics`` on ``worker.metrics_port``.
"""

from __future__ import annotations

import logging
import sys

from prometheus_client import REGISTRY

from agents.app import create_runtime
from core.errors import PrerankError
from core.settings import Settings
from monitoring.metrics import metrics_from_default_registry
from monitoring.server import serve_metrics

log = logging.getLogger(__name__)

SERVING = {"catalog", "history", "joiner", "scorer"}
RANKING = {"ranker"}
TRAINING = {"trainer", "publisher"}
KNOWN = SERVING | RANKING | TRAINING


def plan(agents: list[str]) -> set[str]:
    """Validate the agent names; the catalog agent comes with every serving set.

    >>> sorted(plan(["scorer"]))
    ['catalog', 'scorer']
    >>> sorted(plan(["trainer"]))
    ['trainer']
    """
    chosen = {name.strip() for name in agents if name.strip()}
    unknown = chosen - KNOWN
    if unknown:
        raise PrerankError(f"unknown agents {sorted(unknown)}; choose from {sorted(KNOWN)}")
    if not chosen:
        raise PrerankError("no agents chosen")
    if chosen & SERVING:
        chosen.add("catalog")
    return chosen


def build(settings: Settings, agents: set[str], registry=REGISTRY, web_port: int | None = None):
    """The Faust app with the chosen agents installed; returns (runtime, installed parts)."""
    from monitoring.faust_sensor import enable_faust_sensor
    from monitoring.metrics import PrerankMetrics

    metrics = metrics_from_default_registry() if registry is REGISTRY else PrerankMetrics(registry)
    app_id = settings.worker.app_id
    if not agents & SERVING:  # each role has its own consumer group (see the module docstring)
        app_id = f"{app_id}-ranker" if agents & RANKING else f"{app_id}-trainer"
    # Only the serving workers answer HTTP (POST /score); the others need no web server.
    runtime = create_runtime(settings, registry=registry, app_id=app_id, web_port=web_port,
                             web_enabled=bool(agents & SERVING))
    runtime.metrics = metrics
    enable_faust_sensor(runtime.app, registry)
    parts = {}
    if agents & SERVING:
        from agents import serving

        parts["serving"] = serving.install(runtime, metrics, agents)
    if "ranker" in agents:
        from agents import ranker

        parts["ranker"] = ranker.install(runtime, metrics, parts.get("serving"))
    if "trainer" in agents:
        from agents import trainer

        parts["trainer"] = trainer.install(runtime, metrics, publish="publisher" in agents)
    return runtime, parts, metrics


def run_worker(settings: Settings, agents: list[str], extra: list[str] | None = None, index: int = 0,
               parent_pid: int | None = None) -> int:
    chosen = plan(agents)
    watch = None
    if parent_pid is not None:
        from core.parent_watch import ParentWatch

        watch = ParentWatch(parent_pid)
        if not watch.parent_alive():
            raise PrerankError(f"worker: parent process {parent_pid} is already gone")
        watch.start()
    from core.memory import freeze_survivors, tune_collector
    from core.threads import limit_threads

    limit_threads(settings.worker.torch_threads)
    tune_collector(settings.worker.gc_young_objects)
    web_port = settings.worker.web_port + index
    runtime, _, _ = build(settings, chosen, web_port=web_port)

    @runtime.app.task
    async def freeze_startup_objects():
        # what start-up built lives as long as the worker: out of every later collection
        freeze_survivors()

    server = serve_metrics(REGISTRY, settings.worker.metrics_port + index, settings.worker.metrics_host)
    log.info("worker %s: agents %s, metrics on :%d", runtime.app.conf.id, sorted(chosen), server.port)
    sys.argv = ["prerank-worker", "worker", "--web-port", str(web_port),
                "--web-host", settings.worker.web_host, *(extra or [])]
    try:
        runtime.app.main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        server.close()
        if watch is not None:
            watch.stop()
    return 0
