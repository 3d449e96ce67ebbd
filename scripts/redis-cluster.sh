#!/usr/bin/env bash
# Starts or stops a local Redis Cluster for PAM's remote KV tier: 6 nodes of
# Debian's redis-server (3 masters, 3 replicas) on 127.0.0.1 ports
# BASE_PORT..BASE_PORT+5 (default 7000), each with its data, config and log
# under DIR/PORT. `start` prints the seed address (127.0.0.1:BASE_PORT) on
# stdout once every slot is served; `stop` shuts the nodes down and is a
# no-op for nodes that are not running.
#
# Eviction is Redis's own: each node runs with maxmemory (REDIS_MAXMEMORY,
# default 256mb) and maxmemory-policy allkeys-lru, so old KV blocks make room
# for new ones. Persistence (RDB/AOF) is off: the tier is a cache.
#
# Authentication: with REDIS_PASSWORD set in the environment every node
# requires it (requirepass, and masterauth for replication); with REDIS_USER
# too, that ACL user gets every key and command and the default user is
# disabled. The password never appears on a command line (redis-cli reads it
# from REDISCLI_AUTH, the nodes from their config file, mode 600).
#   scripts/redis-cluster.sh start DIR [BASE_PORT]
#   scripts/redis-cluster.sh stop DIR [BASE_PORT]
set -euo pipefail
usage() { echo "usage: $0 start|stop DIR [BASE_PORT]" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2 base=${3:-7000}
case "$base" in ''|*[!0-9]*) usage ;; esac
[ "$base" -ge 1 ] && [ "$((base + 5))" -le 65535 ] || { echo "$0: BASE_PORT out of range" >&2; exit 2; }
maxmem=${REDIS_MAXMEMORY:-256mb}
ports=$(seq "$base" "$((base + 5))")

# redis-cli authenticates from the environment, never from its arguments.
if [ -n "${REDIS_PASSWORD:-}" ]; then
  export REDISCLI_AUTH=$REDIS_PASSWORD
fi
cli() { if [ -n "${REDIS_USER:-}" ]; then redis-cli --user "$REDIS_USER" "$@"; else redis-cli "$@"; fi; }

# Every node is asked to shut down first, then waited for (a node takes a
# moment to exit after it says so), then killed if it is still there.
stop_all() {
  local pids=() p pid
  for p in $ports; do
    pid=$(cat "$dir/$p/redis.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
    cli -p "$p" shutdown nosave now force >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  done
  for p in $ports; do rm -f "$dir/$p/redis.pid"; done
}

case "$cmd" in
start)
  command -v redis-server >/dev/null || { echo "$0: redis-server not found (bash scripts/setup.sh installs it)" >&2; exit 1; }
  mkdir -p "$dir"
  stop_all
  for p in $ports; do
    rm -rf "${dir:?}/$p"
    mkdir -p "$dir/$p"
    d=$(cd "$dir/$p" && pwd)
    conf="$d/redis.conf"
    (umask 077; : >"$conf")
    if [ -n "${REDIS_PASSWORD:-}" ]; then
      if [ -n "${REDIS_USER:-}" ]; then
        printf 'user %s on >%s ~* &* +@all\nuser default off\nmasteruser %s\nmasterauth %s\n' \
          "$REDIS_USER" "$REDIS_PASSWORD" "$REDIS_USER" "$REDIS_PASSWORD" >>"$conf"
      else
        printf 'requirepass %s\nmasterauth %s\n' "$REDIS_PASSWORD" "$REDIS_PASSWORD" >>"$conf"
      fi
    fi
    redis-server "$conf" --port "$p" --bind 127.0.0.1 --protected-mode no --daemonize yes \
      --dir "$d" --pidfile "$d/redis.pid" --logfile "$d/redis.log" \
      --cluster-enabled yes --cluster-config-file "$d/nodes.conf" --cluster-node-timeout 2000 \
      --save '' --appendonly no --maxmemory "$maxmem" --maxmemory-policy allkeys-lru \
      --repl-diskless-sync-delay 0 --cluster-replica-validity-factor 0 \
      --proto-max-bulk-len 512mb >/dev/null
  done
  for p in $ports; do
    for _ in $(seq 100); do cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
    cli -p "$p" ping >/dev/null 2>&1 || { echo "$0: node $p did not start (see $dir/$p/redis.log)" >&2; stop_all; exit 1; }
  done
  nodes=()
  for p in $ports; do nodes+=("127.0.0.1:$p"); done
  if ! cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1; then
    echo "$0: cluster create failed (see $dir/create.log)" >&2; stop_all; exit 1
  fi
  # ready when every node (not only the first) sees the whole cluster (until
  # gossip has spread, a node may still answer CLUSTERDOWN) and every replica
  # has synced with its master (a replica that never synced refuses to take
  # over when its master dies)
  for _ in $(seq 300); do
    ok=1
    for p in $ports; do
      cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || { ok=0; break; }
      [ "$(cli -p "$p" cluster nodes 2>/dev/null | grep -c connected)" = 6 ] || { ok=0; break; }
      repl=$(cli -p "$p" info replication 2>/dev/null)
      if grep -q 'role:slave' <<<"$repl"; then grep -q 'master_link_status:up' <<<"$repl" || { ok=0; break; }; fi
    done
    if [ $ok = 1 ] && cli --cluster check "127.0.0.1:$base" 2>/dev/null | grep -q 'All 16384 slots covered'; then
      echo "127.0.0.1:$base"; exit 0
    fi
    sleep 0.1
  done
  echo "$0: cluster did not reach state ok (see $dir/*/redis.log)" >&2; stop_all; exit 1 ;;
stop)
  [ -d "$dir" ] || exit 0
  stop_all ;;
*) usage ;;
esac
