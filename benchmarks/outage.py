"""Requests while the embedded Postgres is down (issue 13, item 7: fail within ~5 s with a 503 that says why).

    python -m benchmarks.outage [--requests 5]

The real app (``create_app`` on uvicorn, loopback port chosen by the OS) over its own embedded Postgres in a
scratch data folder, default settings (``web.health_timeout_seconds`` 5), offline model, retrieval and recall
off. After one answered turn the supervisor is stopped (so the outage lasts) and the postmaster is killed
with SIGKILL; then ``POST /api/chat`` and ``GET /health`` are timed one after another, the server is started
again and the time until ``/health`` answers 200 is measured. Prints one line per request and the log lines
the outage produced (how many, and how many came from psycopg/psycopg_pool).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def run(workdir: Path, requests: int) -> int:
    import uvicorn

    from context_assistant.core import load_config
    from context_assistant.services import Services
    from context_assistant.storage import EmbeddedPostgres
    from context_assistant.web import create_app

    config = load_config(
        None,
        env={},
        overrides={
            "data_dir": str(workdir),
            "model.provider": "offline",
            "rag.enabled": False,
            "memory.recall": False,
        },
    )
    server = EmbeddedPostgres(config.data_path)
    services = Services(config, env={})
    app = create_app(services)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True).start()
    counted = _Count()
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the app did not become healthy")
                time.sleep(0.2)
            assert client.post("/api/chat", json={"message": "before"}).status_code == 200
            supervisor = app.state.web.supervisor
            supervisor.stop()
            supervisor.join(30)
            logging.getLogger().addHandler(counted)
            pid = server.running_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while server.running_pid() == pid:
                time.sleep(0.05)
            print(f"load average {os.getloadavg()[0]:.2f}; postmaster {pid} killed")
            for i in range(requests):
                for method, path, body in (
                    ("POST", "/api/chat", {"message": f"during {i}"}),
                    ("GET", "/health", None),
                ):
                    started = time.perf_counter()
                    reply = client.request(method, path, json=body)
                    seconds = time.perf_counter() - started
                    reason = (
                        reply.json().get("error", "")
                        if reply.headers.get("content-type", "").startswith("application/json")
                        else reply.text[:80]
                    )
                    print(f"{method} {path}: {reply.status_code} in {seconds:.2f} s — {reason}")
            started = time.perf_counter()
            try:
                server.start(config.database.name)
            except Exception as exc:  # pg_ctl's own wait may be too short for crash recovery under load
                print(f"(pg_ctl: {str(exc).splitlines()[0][:120]})")
            while client.get("/health").status_code != 200:
                time.sleep(0.2)
            print(f"server started again; /health 200 after {time.perf_counter() - started:.1f} s")
            print(f"a turn after the restart: {client.post('/api/chat', json={'message': 'after'}).status_code}")
    finally:
        logging.getLogger().removeHandler(counted)
        web.should_exit = True
        services.close()
        server.stop()
    pool = [line for line in counted.lines if " psycopg" in line]
    multi = [line for line in counted.lines if "\n" in line]
    print(
        f"log during the outage: {len(counted.lines)} lines at INFO+, {len(pool)} from psycopg/psycopg_pool, {len(multi)} multi-line"
    )
    for line in counted.lines:
        if not line.startswith("INFO httpx"):
            print(f"  {line[:200]}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = Path(os.environ.get("BENCH_DIR", tempfile.gettempdir()))
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ca-bench-outage-", dir=base) as work:
        return run(Path(work), args.requests)


if __name__ == "__main__":
    sys.exit(main())
