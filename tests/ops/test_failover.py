"""Failover under load: ``coalition serve`` (with its scheduler) on a multi-host database URL
(``?host=a&host=b&target_session_attrs=read-write``), signed idempotent earns from many
threads, the primary stopped hard (``pg_ctl stop -m immediate``) and its synchronous standby
promoted. Requests in flight fail cleanly (``503 unavailable``), the client retries each with
its Idempotency-Key until it is answered, the pools reconnect to the new primary by
themselves: every operation is in the ledger exactly once, nothing acknowledged is missing,
``coalition check`` is clean, and the jobs resume after one warning line each
(docs/operations.md, "Failover").

This test breaks its pair, so it makes its own rather than the session's shared one.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from api.client import ApiResponse, CoalitionClient, ProblemError
from tests.api.conftest import Client, ok
from tests.api.serving import COALITION, Served, serve_process
from tests.ops.conftest import DATABASE, Pair, migrated_pair, require_servers
from tests.pgservers import PgServers, wait_until

THREADS = 8
EARNS_PER_THREAD = 30
POINTS_PER_EARN = 3
#: How long one operation may go unanswered, retried, before the test fails.
ANSWER_TIMEOUT_S = 120.0
RETRY_PAUSE_S = 0.05


def multi_host_url(pair: Pair) -> str:
    """The failover URL: both servers, the one that takes writes chosen at each connect."""
    hosts = "&".join(f"host={s.host}:{s.port}" for s in (pair.primary, pair.standby))
    return f"postgresql+psycopg://postgres@/{DATABASE}?{hosts}&target_session_attrs=read-write"


class Load:
    """The earns of every thread: what was acknowledged, and the 503s met on the way."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acknowledged: dict[str, str] = {}  # reference -> transaction id
        self.unavailable = 0
        self.errors: list[BaseException] = []

    def until_answered(self, call: Callable[[], ApiResponse]) -> ApiResponse:
        """``call`` (one request with a fixed Idempotency-Key) again until it is answered."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            try:
                return call()
            except ProblemError as exc:
                unavailable = exc.status == 503 and exc.code == "unavailable"
                if not (unavailable or exc.code == "idempotency-key-in-use"):
                    raise
                if time.monotonic() > deadline:
                    raise
                with self.lock:
                    self.unavailable += unavailable
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline:
                    raise
            time.sleep(RETRY_PAUSE_S)  # a retry's pause, not a synchronisation

    def run(self, client: CoalitionClient, member_id: str, thread: int) -> None:
        try:
            for n in range(EARNS_PER_THREAD):
                reference, key = f"t{thread}-{n}", str(uuid.uuid4())
                answer = self.until_answered(
                    lambda r=reference, k=key: client.earn(  # type: ignore[misc]
                        member_id, r, POINTS_PER_EARN, "EUR", idempotency_key=k
                    )
                )
                assert answer.status == 201, answer
                with self.lock:
                    self.acknowledged[reference] = answer.data["id"]
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)


def _partner(served: Served) -> tuple[str, str, str]:
    """A partner with a rate card in force and an hmac key: (partner id, key id, secret)."""
    operator = Client(served.base_url, served.operator)
    made = ok(
        operator.post("/v1/admin/partners", {"name": "Failover Foods", "currency": "EUR"}), 201
    )
    card = {
        "earn_points_per_unit": "1",
        "issue_price_per_point": "0.01",
        "burn_value_per_point": "0.01",
        "reimburse_price_per_point": "0.008",
        "effective_from": (datetime.now(UTC) - timedelta(minutes=4)).isoformat(),
    }
    ok(operator.post(f"/v1/admin/partners/{made['id']}/rate-cards", card), 201)
    key = ok(
        operator.post(
            f"/v1/admin/partners/{made['id']}/keys",
            {"alg": "hmac-sha256", "scopes": ["earn", "burn", "read"]},
        ),
        201,
    )
    return made["id"], key["key_id"], key["secret"]


def _ledger(pair: Pair, partner_id: str) -> dict[str, list[str]]:
    """The earns of the partner in the (new) primary's ledger: reference -> transaction ids."""
    rows = pair.standby.query(
        "SELECT reference, id FROM transactions WHERE partner_id = %s AND kind = 'earn'",
        (partner_id,),
        database=DATABASE,
    )
    found: dict[str, list[str]] = {}
    for reference, txn_id in rows:
        found.setdefault(reference, []).append(txn_id)
    return found


def _job_lines(served: Served) -> list[dict[str, Any]]:
    return [line for line in served.lines() if line.get("logger") == "coalition.jobs"]


def test_failover_under_signed_idempotent_load_does_every_operation_once_and_loses_nothing(
    tmp_path: Path,
) -> None:
    require_servers()
    with PgServers() as servers, contextlib.ExitStack() as stack:
        pair = migrated_pair(servers, synchronous=True)
        serving = serve_process(tmp_path, database_url=multi_host_url(pair))
        stack.callback(serving.close)
        served = next(serving)
        partner_id, key_id, secret = _partner(served)
        load = Load()
        clients = [
            CoalitionClient(served.base_url, key_id, secret, retries=0) for _ in range(THREADS)
        ]
        for client in clients:
            stack.callback(client.close)
        members = [c.create_member().data["member_id"] for c in clients]
        threads = [
            threading.Thread(target=load.run, args=(c, m, i), name=f"load-{i}")
            for i, (c, m) in enumerate(zip(clients, members, strict=True))
        ]
        for thread in threads:
            thread.start()
        total = THREADS * EARNS_PER_THREAD
        wait_until(lambda: len(load.acknowledged) >= total // 3 or load.errors, 120, "load")
        acknowledged_before = dict(load.acknowledged)
        pair.primary.stop("immediate")  # a crash: in-flight transactions are lost, unanswered
        pair.standby.promote()
        for thread in threads:
            thread.join(timeout=ANSWER_TIMEOUT_S + 30)
        assert not load.errors, load.errors
        assert load.unavailable > 0, "no request met the failover"

        # every operation exactly once; every acknowledged one present, with its id
        ledger = _ledger(pair, partner_id)
        assert len(load.acknowledged) == total
        assert ledger == {ref: [txn] for ref, txn in load.acknowledged.items()}
        assert acknowledged_before.items() <= load.acknowledged.items()
        for client, member in zip(clients, members, strict=True):
            balance = client.balance(member).data
            assert balance["available"] == EARNS_PER_THREAD * POINTS_PER_EARN

        checked = subprocess.run(
            [*COALITION, "check"],
            check=False,
            env=served.env,
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()

        # the jobs resume on the new primary: a hold of one second expires by itself
        hold = clients[0].hold(members[0], "failover-hold", 1, expires_in=1).data
        wait_until(
            lambda: clients[0].get_hold(hold["id"]).data["status"] == "expired",
            60,
            "the hold-expiry job to expire a hold after the failover",
        )
        # a job that met the outage said so in one warning line, and again when it ran again
        lines = _job_lines(served)
        assert not [line for line in served.lines() if line["level"] in ("error", "critical")]
        warned = [line for line in lines if "database is unreachable" in line["message"]]
        names = [line["message"].split(":", 1)[0] for line in warned]
        assert len(names) == len(set(names)), warned
        assert all("exc" not in line for line in lines)
        for name in names:
            wait_until(
                lambda n=name: any(  # type: ignore[misc]
                    line["message"] == f"{n}: the database is reachable again; the job runs"
                    for line in _job_lines(served)
                ),
                30,
                f"{name} to run again",
            )
