#!/usr/bin/env bash
# The failover drill of docs/operations.md, on one machine: etcd and two Patroni-managed
# PostgreSQL 15 nodes on free loopback ports in a temporary directory, from deploy/patroni/
# patroni.yml. It waits for a leader and its synchronous standby, writes a row, switches over,
# writes again, then crashes the leader (patroni SIGKILLed, its PostgreSQL stopped "immediate",
# as a lost machine looks) and waits for the standby to take over; both rows are there, the
# crashed node rejoins as the standby. Everything it ran is printed after "$ ".
#
#   sudo deploy/patroni/drill.sh        (Debian: postgresql-15, patroni, etcd-server, etcd-client)
#
# What differs from a real node: ports on 127.0.0.1 instead of host names, and a copy of
# patroni.yml whose post_bootstrap names this checkout's script and whose shared_buffers is
# 128MB (a shared test machine). Everything it started is stopped and removed at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run_as=postgres
[ "$(id -u)" = 0 ] || run_as=""
work="$(mktemp -d /tmp/coalition-patroni-drill.XXXXXX)"
chmod 755 "$work"
pids=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [ -n "$run_as" ]; then runuser -u "$run_as" -- "$@"; else "$@"; fi; }
say() { printf '\n$ %s\n' "$*"; }
show() { say "$@"; "$@" 2>&1; }

cleanup() {
    # the Patroni nodes first (each stops its PostgreSQL), etcd last
    for (( i=${#pids[@]}-1; i>=0; i-- )); do
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    rm -rf "$work"
}
failed() {
    echo "# the drill failed; the logs:" >&2
    tail -n 30 "$work"/*/patroni.log "$work/etcd.log" >&2 || true
}
trap failed ERR
trap cleanup EXIT

etcd_client=$(free_port) etcd_peer=$(free_port)
declare -A pg_port api_port pid_of
for node in pg1 pg2; do pg_port[$node]=$(free_port); api_port[$node]=$(free_port); done
export PATRONI_SUPERUSER_PASSWORD="drill-$RANDOM$RANDOM" PATRONI_REPLICATION_PASSWORD="drill-$RANDOM$RANDOM"
export PATRONI_REWIND_PASSWORD="drill-$RANDOM$RANDOM" COALITION_DB_PASSWORD="drill-$RANDOM$RANDOM"
export PATRONI_ETCD3_HOSTS="127.0.0.1:$etcd_client"

sed -e "s|post_bootstrap: /etc/patroni/post-bootstrap.sh|post_bootstrap: $here/post-bootstrap.sh|" \
    -e "s|shared_buffers: 1GB|shared_buffers: 128MB|" "$here/patroni.yml" >"$work/patroni.yml"
cat >"$work/patronictl.yml" <<EOF
scope: coalition
namespace: /service/
etcd3:
  hosts: 127.0.0.1:$etcd_client
EOF
ctl() { show patronictl -c "$work/patronictl.yml" "$@"; }
list() { ctl list coalition; }

echo "# etcd on 127.0.0.1:$etcd_client; pg1 on ${pg_port[pg1]} (REST ${api_port[pg1]}), pg2 on ${pg_port[pg2]} (REST ${api_port[pg2]})"
etcd --name drill --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "drill=http://127.0.0.1:$etcd_peer" >"$work/etcd.log" 2>&1 &
pids+=($!)

start_node() {  # in a subshell that execs patroni: $! is patroni's own pid
    local node=$1
    mkdir -p "$work/$node" && chown "${run_as:-$(id -un)}" "$work/$node"
    (
        export PATRONI_NAME=$node \
            PATRONI_RESTAPI_LISTEN="127.0.0.1:${api_port[$node]}" \
            PATRONI_RESTAPI_CONNECT_ADDRESS="127.0.0.1:${api_port[$node]}" \
            PATRONI_POSTGRESQL_LISTEN="127.0.0.1:${pg_port[$node]}" \
            PATRONI_POSTGRESQL_CONNECT_ADDRESS="127.0.0.1:${pg_port[$node]}" \
            PATRONI_POSTGRESQL_DATA_DIR="$work/$node/data" \
            PATRONI_POSTGRESQL_PGPASS="$work/$node/pgpass"
        exec >>"$work/$node/patroni.log" 2>&1
        if [ -n "$run_as" ]; then
            exec env HOME=/var/lib/postgresql setpriv --reuid="$run_as" --regid="$run_as" \
                --init-groups patroni "$work/patroni.yml"
        fi
        exec patroni "$work/patroni.yml"
    ) &
    pid_of[$node]=$!
    pids+=($!)
}

# wait_for <what> <seconds> <command...>: poll (every 0.5 s) until the command succeeds
wait_for() {
    local what=$1 seconds=$2 started=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS - started > seconds )); then
            echo "gave up waiting for $what" >&2
            failed
            exit 1
        fi
        sleep 0.5
    done
    echo "# $what after $(( SECONDS - started )) s"
}
members_json() { patronictl -c "$work/patronictl.yml" list coalition -f json; }
has() { members_json | python3 -c "import json,sys; m=json.load(sys.stdin); sys.exit(not ($1))"; }
leader() { members_json | python3 -c "import json,sys; print([x['Member'] for x in json.load(sys.stdin) if x['Role']=='Leader'][0])"; }
sql() {  # the password is left out of what is printed
    local node=$1; shift
    say psql "postgresql://postgres@127.0.0.1:${pg_port[$node]}/coalition" -X -At -c "$@"
    PGPASSWORD="$PATRONI_SUPERUSER_PASSWORD" psql "postgresql://postgres@127.0.0.1:${pg_port[$node]}/coalition" -X -At -c "$@" 2>&1
}
export PGPASSWORD="$PATRONI_SUPERUSER_PASSWORD"
either="postgresql://postgres@127.0.0.1:${pg_port[pg1]},127.0.0.1:${pg_port[pg2]}/coalition?target_session_attrs=read-write"

wait_for "etcd answering" 30 etcdctl --endpoints "127.0.0.1:$etcd_client" endpoint health
start_node pg1
wait_for "pg1 leading" 120 has "any(x['Member']=='pg1' and x['Role']=='Leader' and x['State']=='running' for x in m)"
start_node pg2
wait_for "pg2 the synchronous standby, streaming" 180 has "any(x['Member']=='pg2' and x['Role']=='Sync Standby' and x['State'] in ('streaming','running') for x in m)"
list
ctl edit-config coalition --set ttl=20 --set loop_wait=2 --set retry_timeout=5 --force
sql pg1 "CREATE TABLE drill (n int, at timestamptz DEFAULT now(), on_port int DEFAULT inet_server_port()); INSERT INTO drill (n) VALUES (1) RETURNING n, on_port"

echo; echo "# switchover: pg1 hands over to pg2"
ctl switchover coalition --leader pg1 --candidate pg2 --force
wait_for "pg2 leading, pg1 its synchronous standby" 120 has "any(x['Member']=='pg2' and x['Role']=='Leader' for x in m) and any(x['Member']=='pg1' and x['Role']=='Sync Standby' and x['State'] in ('streaming','running') for x in m)"
list
sql pg2 "INSERT INTO drill (n) VALUES (2) RETURNING n, on_port"
say psql "$either" -c "SELECT inet_server_port()"   # the service's multi-host URL finds the leader
psql "$either" -X -At -c "SELECT inet_server_port()"

echo; echo "# crash: the leader's machine is gone (patroni SIGKILL, PostgreSQL stopped immediate)"
crashed=$(leader)
say kill -KILL "${pid_of[$crashed]}" "&&" pg_ctl stop -m immediate -D "$work/$crashed/data"
kill -KILL "${pid_of[$crashed]}"
as_pg /usr/lib/postgresql/15/bin/pg_ctl stop -m immediate -D "$work/$crashed/data" 2>&1
other=pg1; [ "$crashed" = pg1 ] && other=pg2
wait_for "$other leading alone" 120 has "any(x['Member']=='$other' and x['Role']=='Leader' and x['State']=='running' for x in m)"
list
sql "$other" "INSERT INTO drill (n) VALUES (3) RETURNING n, on_port"
sql "$other" "SELECT n, on_port FROM drill ORDER BY n"
say psql "$either" -c "SELECT inet_server_port()"
psql "$either" -X -At -c "SELECT inet_server_port()"

echo; echo "# the crashed node comes back: it rejoins as the standby (pg_rewind if needed)"
start_node "$crashed"
wait_for "$crashed the synchronous standby again" 180 has "any(x['Member']=='$crashed' and x['Role']=='Sync Standby' and x['State'] in ('streaming','running') for x in m)"
list
sql "$crashed" "SELECT n, on_port FROM drill ORDER BY n"
