"""Run the ingest role alone: ``python -m ingest``.

One of these, on a plain persistent subscription, is the default. Several split the storage
between them through the broker's shared subscription (``HUB_MQTT_SHARE_GROUP``; each needs
its own ``HUB_MQTT_CLIENT_ID``), and one of them at a time evaluates the rules
(ingest/evaluator.py). The role reloads devices and rules and saves device clocks itself
(ingest/service.py), so this process needs nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from core import log as hub_log
from core.db import connect, create_pool, migrate
from core.errors import HubError
from core.settings import Settings
from ingest.service import IngestRole

log = logging.getLogger("ingest")


async def run(settings: Settings) -> None:
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await create_pool(settings.database_url, settings.db_pool_min, settings.db_pool_max)
    role = IngestRole(settings, pool)
    await role.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await role.stop()
    await pool.close()


def main() -> int:
    hub_log.setup()
    try:
        settings = Settings()  # type: ignore[call-arg]  # database_url comes from HUB_*
        asyncio.run(run(settings))
    except HubError as e:
        print(f"error [{e.code}]: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:
        with contextlib.suppress(Exception):
            log.exception("ingest failed")
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
