"""Every worker's Faust consumer waits at the broker no longer than ``kafka.fetch_max_wait_ms``."""

from __future__ import annotations

import asyncio

from agents.app import create_faust_app
from core.settings import Settings


def test_the_workers_consumer_takes_its_fetch_wait_from_the_settings(tmp_path):
    settings = Settings(kafka={"fetch_max_wait_ms": 7}, worker={"data_dir": tmp_path})
    app = create_faust_app(settings, web_enabled=False)

    async def build():  # aiokafka's clients are built inside a loop; built, not started: no broker
        return app.consumer._new_consumer_thread()._create_worker_consumer(app.transport)

    client = asyncio.run(build())
    assert client._fetch_max_wait_ms == 7  # Faust alone would build it with 1500
    assert app.fetch_max_wait_ms == 7
