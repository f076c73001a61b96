"""``python -m bench.webhooks``: the earn throughput with no webhook endpoint against one
subscribed endpoint, in the same run, and the dispatcher's deliveries per second to a local
receiver (another process on loopback, answering 200 with keep-alive). Writes
bench/webhooks_results.json.

On PostgreSQL (``COALITION_BENCH_DATABASE_URL``, default the local server) in a scratch
database ``coalition_bench_webhooks_<pid>``, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.postgres import scratch_database, server_url
from bench.throughput import prepare, throughput
from coalition.config import Settings
from coalition.db import session_factory, transaction
from partners.webhooks.delivery import Dispatcher
from partners.webhooks.endpoints import Webhooks
from partners.webhooks.tables import WebhookDelivery

RESULTS = Path(__file__).resolve().parent / "webhooks_results.json"


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # no 40 ms wait on the delayed ACK of a small write

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(port: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    port.value = server.server_address[1]
    server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per earn run")
    parser.add_argument("--members", type=int, default=200)
    args = parser.parse_args()
    port = multiprocessing.Value("i", 0)
    receiver = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    receiver.start()
    while port.value == 0:
        time.sleep(0.01)
    try:
        with scratch_database(server_url(), f"coalition_bench_webhooks_{os.getpid()}") as url:
            results = _run(url.render_as_string(hide_password=False), port.value, args)
    finally:
        receiver.terminate()
    results["at"] = datetime.now(UTC).isoformat()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


def _run(url: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    bench = prepare(url, members=args.members)
    none = throughput(bench, bench.earn, threads=1, seconds=args.seconds)
    settings = replace(Settings(database_url=url, secret_key=b"b" * 32), webhook_allow_private=True)
    sessions = session_factory(bench.engine)
    with transaction(sessions) as s:
        Webhooks(settings.secret_key, allow_private=True).create(
            s,
            bench.partner_id,
            url=f"http://127.0.0.1:{port}/hooks",
            events=None,
            description="bench",
            now=datetime.now(UTC),
        )
    one = throughput(bench, bench.earn, threads=1, seconds=args.seconds)
    with sessions() as s:
        pending = s.scalar(select(func.count()).select_from(WebhookDelivery)) or 0
    dispatcher = Dispatcher(settings, sessions)
    started = time.perf_counter()
    while dispatcher.run():
        pass
    elapsed = time.perf_counter() - started
    with sessions() as s:
        delivered = s.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == "delivered")
        )
    bench.engine.dispose()
    return {
        "earns_per_s_no_endpoint": round(none.per_s, 1),
        "earns_per_s_one_endpoint": round(one.per_s, 1),
        "cpu_ms_per_earn_no_endpoint": round(none.cpu_ms_per_op, 3),
        "cpu_ms_per_earn_one_endpoint": round(one.cpu_ms_per_op, 3),
        "deliveries": pending,
        "delivered": delivered,
        "deliveries_per_s": round((delivered or 0) / elapsed, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
