"""A real uvicorn server on loopback, run in a thread of the test process (stopped by its own flag)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from devstack.stack import free_port


@contextmanager
def live_server(app: FastAPI, *, start_timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1:<free port>; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(int(start_timeout / 0.05)):  # bounded wait for the listening socket
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during start-up")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"uvicorn did not start within {start_timeout} s")
        httpx.get(f"{base}/healthz", timeout=5).raise_for_status()
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=5)  # a server stuck on a bug must not hold the test up
