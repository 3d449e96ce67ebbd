#!/usr/bin/env bash
# Two `pam serve` instances sharing KV through a Redis Cluster (6 nodes of
# Debian's redis-server on this test's own ports, started and stopped here):
# instance B answers a prompt instance A served from the remote tier
# (cached_tokens > 0) with the same greedy text as an instance without it;
# values planted in Redis (corrupt, truncated, oversized, foreign model,
# signed with another HMAC key) are rejected, counted in /metrics and never
# used; a master killed (kill -9) under load: every request completes with
# the right text and the clients follow the failover; the cluster
# unreachable mid-run and down at start: a warning, serving goes on.
# usage: cli_serve_remote.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
pam=$1 shared=$2 build=$3
src=$(cd "$(dirname "$0")/.." && pwd)
base=7700 # nodes on 7700..7705 (cluster bus 17700..17705)
tmp=$build/test-tmp/cli_serve_remote
rm -rf "$tmp"; mkdir -p "$tmp"
fail=0
check() { if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  bash "$src/scripts/redis-cluster.sh" stop "$tmp/cluster" "$base" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 1' INT TERM
command -v redis-server >/dev/null || { echo "FAIL: redis-server is needed (bash scripts/setup.sh installs it)"; exit 1; }

seed=$(bash "$src/scripts/redis-cluster.sh" start "$tmp/cluster" "$base")
check "cluster starts ($seed)" $?
masters() { local p; for p in $(seq $base $((base + 5))); do redis-cli -p "$p" role 2>/dev/null | head -1 | grep -q master && echo "$p"; done; }
flush() { local p; for p in $(masters); do redis-cli -p "$p" flushall >/dev/null; done; }
# each_key CMD...: runs `redis-cli -p PORT CMD... KEY` for every pam key, on its master
each_key() { local p k; for p in $(masters); do redis-cli -p "$p" --scan --pattern 'pam:*' | while read -r k; do "$@" "$p" "$k"; done; done; }

# start_server NAME ARGS...: sets <NAME>_PORT (waits at most 30 s)
start_server() {
  local name=$1; shift
  "$pam" serve --port 0 -m "$model" -np 2 -c 256 -t 1 "$@" 2>"$tmp/$name.log" &
  local pid=$! port=
  pids+=("$pid")
  eval "${name}_PID=$pid"
  for _ in $(seq 300); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/$name.log")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "server $name did not start:"; cat "$tmp/$name.log"; return 1; }
  eval "${name}_PORT=$port"
}
# complete PORT PROMPT: prints "HTTP_STATUS|CACHED_TOKENS|TEXT" (text JSON-escaped)
complete() {
  local code
  code=$(curl -s -m 60 -o "$tmp/body.$1" -w '%{http_code}' "http://127.0.0.1:$1/v1/completions" \
    -H 'Content-Type: application/json' --data-binary "{\"prompt\":\"$2\",\"max_tokens\":16,\"temperature\":0}")
  local cached text
  cached=$(sed -n 's/.*"cached_tokens":\([0-9]*\).*/\1/p' "$tmp/body.$1")
  text=$(sed -n 's/.*"text":"\(\([^"\\]\|\\.\)*\)".*/\1/p' "$tmp/body.$1")
  echo "$code|${cached:--}|$text"
}
metric() { curl -s -m 10 "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1 == k {print $2}'; }
# wait_metric PORT NAME OP VALUE: polls for up to 30 s
wait_metric() {
  local v
  for _ in $(seq 300); do
    v=$(metric "$1" "$2"); [ -n "$v" ] && awk -v a="$v" -v b="$4" "BEGIN{exit !(a $3 b)}" && return 0; sleep 0.1
  done; echo "  $2 = $v"; return 1
}

model=$tmp/stories260K.gguf
"$pam" convert "$shared/models/stories260K/stories260K.bin" "$shared/models/stories260K/tok512.bin" -o "$model" >/dev/null
check "convert" $?
head -c 32 /dev/urandom >"$tmp/hmac.key"
head -c 32 /dev/urandom >"$tmp/other.key"
# (a generous timeout: the test machine may be loaded; a dead node is refused at once anyway)
remote=(--kv-tier "remote:redis://127.0.0.1:$base,127.0.0.1:$((base + 2))" --kv-remote-hmac-key "$tmp/hmac.key" --kv-remote-timeout 3000)
start_server A "${remote[@]}" || exit 1
start_server B --kv-tier "remote:redis://127.0.0.1:$((base + 1))" --kv-remote-hmac-key "$tmp/hmac.key" --kv-remote-timeout 3000 || exit 1
start_server C || exit 1 # the reference: no remote tier
start_server D --kv-tier "remote:redis://127.0.0.1:$base" --kv-remote-hmac-key "$tmp/other.key" --kv-remote-timeout 3000 || exit 1
grep -q "remote KV tier on" "$tmp/A.log"
check "A reports the remote tier" $?

prompt() { echo "Once upon a time there was a little $1 named Tim. He liked to play with his red ball in the big green park near his house every day"; }
# served by A then B: B's cached tokens and text, C's text
ref() { complete "$C_PORT" "$1" | cut -d'|' -f3-; }

# 1. B reuses what A computed, with the reference text
p=$(prompt dog)
ra=$(complete "$A_PORT" "$p")
[ "${ra%%|*}" = 200 ]
check "A serves the prompt" $?
wait_metric "$A_PORT" 'pam_kv_remote_puts_total{result="ok"}' '>' 0
check "A writes its blocks to the cluster" $?
sleep 0.3
rb=$(complete "$B_PORT" "$p")
IFS="|" read -r code cached text <<<"$rb"
[ "$code" = 200 ] && [ "$cached" -gt 0 ]
check "B answers A's prompt from the remote tier (cached_tokens $cached)" $?
[ "$text" = "$(ref "$p")" ] && [ "$text" = "$(echo "$ra" | cut -d'|' -f3-)" ]
check "B's greedy text equals a single instance's without the remote tier" $?
[ "$(metric "$B_PORT" pam_kv_remote_hit_blocks_total)" -gt 0 ] && [ "$(metric "$B_PORT" pam_kv_remote_tokens_reused_total)" = "$cached" ]
check "B counts remote hits and reused tokens in /metrics" $?
metric "$B_PORT" pam_kv_remote_fetch_seconds_count | grep -q '^[1-9]'
check "B's remote latency histogram has samples" $?

# 2. planted values: rejected by reason, never used
# (stdin from /dev/null: redis-cli would read the key list each_key pipes)
corrupt() { redis-cli -p "$1" setrange "$2" 150 'XXXX' </dev/null >/dev/null; }
truncate_() {
  redis-cli -p "$1" --raw getrange "$2" 0 99 </dev/null | head -c 100 >"$tmp/trunc"
  redis-cli -p "$1" -x set "$2" <"$tmp/trunc" >/dev/null
}
oversize() { redis-cli -p "$1" append "$2" 'more-bytes' </dev/null >/dev/null; }
foreign() { redis-cli -p "$1" setrange "$2" 20 'ZZ' </dev/null >/dev/null; }
i=0
for case in "corrupt checksum" "truncate_ truncated" "oversize oversized" "foreign foreign" "other_key hmac"; do
  read -r how why <<<"$case"
  i=$((i + 1))
  flush
  p=$(prompt "cat$i")
  writer=$A_PORT
  [ "$how" = other_key ] && writer=$D_PORT # signed with another fleet's key
  before=$(metric "$writer" 'pam_kv_remote_puts_total{result="ok"}')
  complete "$writer" "$p" >/dev/null
  wait_metric "$writer" 'pam_kv_remote_puts_total{result="ok"}' '>' "$before" >/dev/null
  sleep 0.3
  [ "$how" = other_key ] || each_key "$how"
  r0=$(metric "$B_PORT" "pam_kv_remote_rejects_total{reason=\"$why\"}")
  t0=$(metric "$B_PORT" pam_kv_remote_tokens_reused_total)
  IFS="|" read -r code cached text <<<"$(complete "$B_PORT" "$p")"
  # (cached_tokens may count a few tokens of a partial local match, never a remote block)
  [ "$code" = 200 ] && [ "$cached" -lt 16 ] && [ "$(metric "$B_PORT" pam_kv_remote_tokens_reused_total)" = "$t0" ] &&
    [ "$text" = "$(ref "$p")" ]
  check "planted $why value: not used, B computes the same text" $?
  r1=$(metric "$B_PORT" "pam_kv_remote_rejects_total{reason=\"$why\"}")
  [ "$r1" -gt "$r0" ]
  check "planted $why value: counted in /metrics ($r0 -> $r1)" $?
done

# 3. a master killed under load: A and B serve the same new prompts side by
# side (each one a local miss: a remote lookup, a hit or a miss, and writes)
flush
rounds=4
for r in $(seq $rounds); do for i in $(seq 6); do ref "$(prompt "bird$i in round $r")" >"$tmp/ref.$r.$i"; done; done
load() { # PORT: every request's status and whether its text is right
  for r in $(seq $rounds); do
    for i in $(seq 6); do
      IFS="|" read -r code cached text <<<"$(complete "$1" "$(prompt "bird$i in round $r")")"
      [ "$code" = 200 ] && [ "$text" = "$(cat "$tmp/ref.$r.$i")" ] && echo ok || echo "bad $code $text"
    done
  done
}
load "$B_PORT" >"$tmp/loadB" &
lb=$!
load "$A_PORT" >"$tmp/loadA" &
la=$!
sleep 0.5
victim=$(masters | head -1)
kill -9 "$(cat "$tmp/cluster/$victim/redis.pid")"
check "master $victim killed (kill -9)" $?
wait $lb; wait $la
[ "$(cat "$tmp/loadA" "$tmp/loadB" | grep -c '^ok$')" = $((2 * rounds * 6)) ]
check "every request under the failover completed with the right text" $?
grep -v '^ok$' "$tmp/loadA" "$tmp/loadB" | head -3
# the clients follow the promoted replica: B reuses a prompt A serves afterwards
followed=1
for i in $(seq 60); do
  p=$(prompt "fox$i")
  complete "$A_PORT" "$p" >/dev/null
  sleep 0.2
  IFS="|" read -r code cached text <<<"$(complete "$B_PORT" "$p")"
  if [ "$code" = 200 ] && [ "$cached" -gt 0 ] && [ "$text" = "$(ref "$p")" ]; then followed=0; break; fi
  sleep 0.3
done
check "after the failover B reuses A's blocks again" $followed

# 4. the cluster unreachable mid-run: a warning, serving goes on
bash "$src/scripts/redis-cluster.sh" stop "$tmp/cluster" "$base" >/dev/null
p=$(prompt "frog")
IFS="|" read -r code cached text <<<"$(complete "$B_PORT" "$p")"
[ "$code" = 200 ] && [ "$text" = "$(ref "$p")" ]
check "cluster stopped: B still serves, same text" $?
wait_metric "$B_PORT" pam_kv_remote_io_errors_total '>' 0 >/dev/null && grep -q "warning: remote KV: .* does not answer" "$tmp/B.log"
check "cluster stopped: a warning, counted in /metrics" $?

# 5. down at start
start_server E --kv-tier "remote:redis://127.0.0.1:$((base + 9))" || exit 1
grep -q "warning: remote KV: no node of" "$tmp/E.log"
check "cluster down at start: a warning" $?
IFS="|" read -r code cached text <<<"$(complete "$E_PORT" "$p")"
[ "$code" = 200 ] && [ "$text" = "$(ref "$p")" ]
check "cluster down at start: serving goes on" $?

# bad flags
"$pam" serve -m "$model" --kv-tier remote:http://x:1 --port 0 2>"$tmp/bad.log"
[ $? -ne 0 ] && grep -q "redis://" "$tmp/bad.log"
check "a malformed remote URL is a clear error" $?
"$pam" serve -m "$model" --kv-tier remote:redis://127.0.0.1:1 --kv-remote-hmac-key "$tmp/nope" --port 0 2>"$tmp/bad.log"
[ $? -ne 0 ] && grep -q "HMAC key" "$tmp/bad.log"
check "a missing HMAC key file is a clear error" $?
exit $fail
