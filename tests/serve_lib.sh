# Helpers for the pam serve shell tests, sourced after they set pam and tmp.
# check NAME STATUS: prints ok/FAIL; a failure sets fail=1.
fail=0
check() { if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT

# start_server LOG ARGS...: sets PORT and SPID (waits at most 30 s).
start_server() {
  local log=$1; shift
  "$pam" serve --port 0 "$@" 2>"$log" &
  SPID=$!; pids+=("$SPID"); PORT=
  for _ in $(seq 300); do
    PORT=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")
    [ -n "$PORT" ] && return 0
    kill -0 "$SPID" 2>/dev/null || break
    sleep 0.1
  done
  echo "server did not start:"; cat "$log"; return 1
}
# req METHOD PATH [BODY]: prints the status; body in $tmp/body, headers in $tmp/hdr.
req() {
  local args=(-s -m 60 -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' -X "$1" "http://127.0.0.1:$PORT$2")
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  curl "${args[@]}"
}
metric() { curl -s -m 10 "http://127.0.0.1:$PORT/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
# wait_metric NAME OP VALUE: polls /metrics for up to 30 s (sanitizer builds are slow).
wait_metric() {
  for _ in $(seq 300); do
    v=$(metric "$1"); [ -n "$v" ] && awk -v a="$v" -v b="$3" "BEGIN{exit !(a $2 b)}" && return 0; sleep 0.1
  done; echo "  $1 = $v"; return 1
}
# stop_server: SIGTERM, expect exit 0 within 30 s.
stop_server() {
  kill -TERM "$SPID"
  for _ in $(seq 300); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
  wait "$SPID"
}
