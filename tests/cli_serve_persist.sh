#!/usr/bin/env bash
# Warm restart: `pam serve --kv-persist DIR` killed (kill -9) while it serves
# and writes its journal, a torn record appended as a crash mid-write would
# leave; the restarted server recovers the complete blocks, cuts the torn
# tail, answers the prompts from the journal (cached_tokens > 0) with the
# same greedy text as a server without persistence; a server of another
# model fingerprint (another block size) leaves the journal alone and says
# so; a clean shutdown keeps the journal too; pam run reads the same journal.
# usage: cli_serve_persist.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
pam=$1 shared=$2 build=$3
tmp=$build/test-tmp/cli_serve_persist
rm -rf "$tmp"; mkdir -p "$tmp"
fail=0
check() { if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT

start_server() { # NAME ARGS...: sets NAME_PORT and NAME_PID
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
complete() { # PORT PROMPT: "STATUS|CACHED|TEXT"
  local code cached text
  code=$(curl -s -m 60 -o "$tmp/body.$1" -w '%{http_code}' "http://127.0.0.1:$1/v1/completions" \
    -H 'Content-Type: application/json' --data-binary "{\"prompt\":\"$2\",\"max_tokens\":16,\"temperature\":0}")
  cached=$(sed -n 's/.*"cached_tokens":\([0-9]*\).*/\1/p' "$tmp/body.$1")
  text=$(sed -n 's/.*"text":"\(\([^"\\]\|\\.\)*\)".*/\1/p' "$tmp/body.$1")
  echo "$code|${cached:--}|$text"
}
prompt() { echo "Once upon a time there was a little $1 named Sue. She liked to sing songs with her friends under the big tree in the garden every morning"; }

model=$tmp/stories260K.gguf
"$pam" convert "$shared/models/stories260K/stories260K.bin" "$shared/models/stories260K/tok512.bin" -o "$model" >/dev/null
check "convert" $?
dir=$tmp/journal
start_server C || exit 1 # reference: no persistence
for i in $(seq 8); do complete "$C_PORT" "$(prompt "bird$i")" | cut -d'|' -f3- >"$tmp/ref.$i"; done

# 1. kill -9 in the middle of serving and writing
start_server S1 --kv-persist "$dir" || exit 1
grep -q "persistent KV journal in" "$tmp/S1.log"
check "S1 reports the journal" $?
(for i in $(seq 8); do complete "$S1_PORT" "$(prompt "bird$i")" >"$tmp/s1.$i"; done) &
loader=$!
for _ in $(seq 300); do [ -s "$tmp/s1.4" ] && break; sleep 0.05; done
kill -9 "$S1_PID"
wait "$loader" 2>/dev/null
journal=$(ls "$dir"/pam-kv-*.log)
[ -s "$journal" ]
check "the journal holds records after kill -9" $?
head -c 777 /dev/urandom >>"$journal" # a record torn by the crash

# 2. restart: recovery, reuse, identical text
start_server S2 --kv-persist "$dir" || exit 1
grep -q "recovered [1-9][0-9]* block layers" "$tmp/S2.log"
check "S2 recovers the complete blocks" $?
grep -q "ignored a torn tail of 777 bytes" "$tmp/S2.log"
check "S2 ignores the torn tail" $?
all_same=0 reused=0
for i in $(seq 8); do
  IFS='|' read -r code cached text <<<"$(complete "$S2_PORT" "$(prompt "bird$i")")"
  [ "$code" = 200 ] && [ "$text" = "$(cat "$tmp/ref.$i")" ] || { all_same=1; echo "  prompt $i: $code $text"; }
  [ "$cached" -gt 0 ] && reused=$((reused + 1))
done
check "after the restart every answer equals the server's without persistence" $all_same
[ "$reused" -ge 4 ]
check "after the restart the prompts served before the kill come from the journal ($reused of 8)" $?
v=$(curl -s "http://127.0.0.1:$S2_PORT/metrics" | awk '$1 == "pam_kv_persist_hit_blocks_total" {print $2}')
[ "${v:-0}" -gt 0 ]
check "journal hits in /metrics" $?

# 3. a clean shutdown keeps it
kill -TERM "$S2_PID"; wait "$S2_PID"
check "S2 exits cleanly" $?
start_server S3 --kv-persist "$dir" || exit 1
IFS='|' read -r code cached text <<<"$(complete "$S3_PORT" "$(prompt bird8)")"
[ "$code" = 200 ] && [ "$cached" -gt 0 ] && [ "$text" = "$(cat "$tmp/ref.8")" ]
check "after a clean shutdown the journal answers too" $?
kill -TERM "$S3_PID"; wait "$S3_PID"

# 4. another model fingerprint (block size 32): left alone, said so
start_server S4 --kv-persist "$dir" --kv-block 32 || exit 1
grep -q "journal(s) of another model" "$tmp/S4.log"
check "another fingerprint says the journal is not its own" $?
IFS='|' read -r code cached text <<<"$(complete "$S4_PORT" "$(prompt bird1)")"
[ "$code" = 200 ] && [ "$cached" = 0 ] && [ "$text" = "$(cat "$tmp/ref.1")" ]
check "another fingerprint computes (same text, nothing reused)" $?
kill -TERM "$S4_PID"; wait "$S4_PID"

# pam run shares the server's journal (same model, block size and KV type)
"$pam" run -m "$model" -p "$(prompt bird1)" -n 2 --temp 0 -t 1 --kv-persist "$dir" 2>"$tmp/run.log" >/dev/null
[ $? -eq 0 ] && grep -q "^kv persist: [1-9][0-9]* of" "$tmp/run.log"
check "pam run takes the server's blocks from the journal" $?
exit $fail
