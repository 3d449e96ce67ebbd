#!/usr/bin/env bash
# The remote KV tier, side by side in one run on one local Redis Cluster:
#  1. TTFT of instance B on a prompt instance A already served (B takes the
#     prompt's blocks from the cluster) against A's cold TTFT on the same
#     prompt (same model, flags and machine), for PROMPTS prompts of about
#     TOKENS tokens;
#  2. the tier's fetch rate against redis-benchmark's GET throughput for
#     values of one block's size (bench_kv_remote).
#
#   bench/remote_kv.sh [MODEL.gguf] [TOKENS] [PROMPTS] [BASE_PORT]
#
# and 3. the TTFT of a prompt repeated after a restart with --kv-persist
# against its cold TTFT before the restart (kill -9 in between).
#
# Without MODEL it generates qwen2.5-0.5b q8_0 with 6 layers (random
# weights; speed does not depend on their values). Needs redis-server,
# redis-cli, redis-benchmark (bash scripts/setup.sh) and python3 for the
# prompt text. TTFT is the time of a max_tokens=1 completion.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pam=${PAM_BIN:-$root/build/pam}
bench=${BENCH_KV_REMOTE:-$root/build/bench_kv_remote}
model=${1:-} tokens=${2:-2048} prompts=${3:-3} base=${4:-7900}
threads=${THREADS:-2}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  bash "$root/scripts/redis-cluster.sh" stop "$work/cluster" "$base" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "$model" ]; then
  model=$work/model.gguf
  "$pam" gen-model --shape qwen2.5-0.5b --type q8_0 --layers 6 -o "$model" >/dev/null
fi
seed=$(bash "$root/scripts/redis-cluster.sh" start "$work/cluster" "$base")
head -c 32 /dev/urandom >"$work/hmac.key"
start() { # NAME ARGS...: starts pam serve, sets NAME_PORT and NAME_PID
  local name=$1; shift
  "$pam" serve -m "$model" --port 0 -np 1 -c $((tokens + 256)) -t "$threads" "$@" 2>"$work/$name.log" &
  pids+=("$!")
  eval "${name}_PID=$!"
  set -- "$name"
  local port=
  for _ in $(seq 600); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/$1.log")
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$work/$1.log"; exit 1; }
  eval "$1_PORT=$port"
}
remote=(--kv-tier "remote:redis://$seed" --kv-remote-hmac-key "$work/hmac.key")
start A "${remote[@]}"
start B "${remote[@]}"
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1 == k {print $2}'; }
# ttft PORT PROMPT_FILE: seconds, and prompt/cached tokens
ttft() {
  curl -s -o "$work/resp" -w '%{time_total}' "http://127.0.0.1:$1/v1/completions" \
    -H 'Content-Type: application/json' --data-binary @"$2"
  echo " $(sed -n 's/.*"prompt_tokens":\([0-9]*\).*"cached_tokens":\([0-9]*\).*/\1 \2/p' "$work/resp")"
}
layers=$(sed -n 's/.*(\([a-z0-9]*\), \([0-9]*\) layers.*/\2/p' "$work/A.log")
printf '%-8s %8s %8s %10s %10s %8s\n' prompt tokens cached "cold A s" "warm B s" "B/A"
sum_ratio=0
for i in $(seq "$prompts"); do
  python3 - "$i" "$tokens" >"$work/p$i.json" <<'PY'
import json, random, sys
i, tokens = int(sys.argv[1]), int(sys.argv[2])
random.seed(i)
w = ["alpha", "river", "stone", "cloud", "green", "quiet", "market", "window", "silver", "garden", "morning", "letter"]
print(json.dumps({"prompt": " ".join(random.choice(w) for _ in range(tokens * 10 // 32)), "max_tokens": 1, "temperature": 0}))
PY
  before=$(metric "$A_PORT" 'pam_kv_remote_puts_total{result="ok"}')
  read -r cold n_prompt _ <<<"$(ttft "$A_PORT" "$work/p$i.json")"
  want=$((before + n_prompt / 16 * layers))
  for _ in $(seq 600); do # A's asynchronous writes are done
    [ "$(metric "$A_PORT" 'pam_kv_remote_puts_total{result="ok"}')" -ge "$want" ] && break
    sleep 0.1
  done
  read -r warm _ cached <<<"$(ttft "$B_PORT" "$work/p$i.json")"
  ratio=$(awk -v a="$cold" -v b="$warm" 'BEGIN{printf "%.3f", b / a}')
  printf '%-8s %8s %8s %10.3f %10.3f %8s\n' "$i" "$n_prompt" "$cached" "$cold" "$warm" "$ratio"
  sum_ratio=$(awk -v s="$sum_ratio" -v r="$ratio" 'BEGIN{print s + r}')
done
awk -v s="$sum_ratio" -v n="$prompts" 'BEGIN{printf "mean B/A TTFT ratio: %.3f (target <= 0.30)\n", s / n}'
echo "B's remote fetch latency (one pipelined round trip, up to 64 blocks):"
curl -s "http://127.0.0.1:$B_PORT/metrics" | grep -E '^pam_kv_remote_fetch_seconds_(sum|count)'
echo
echo "Warm restart (--kv-persist): cold TTFT, then kill -9, restart, the same prompt"
printf '%-8s %8s %8s %10s %10s %8s\n' prompt tokens cached "cold s" "restart s" "ratio"
start P --kv-persist "$work/journal"
read -r cold n_prompt _ <<<"$(ttft "$P_PORT" "$work/p1.json")"
want=$((n_prompt / 16 * layers))
for _ in $(seq 600); do
  [ "$(metric "$P_PORT" 'pam_kv_persist_puts_total{result="ok"}')" -ge "$want" ] && break
  sleep 0.1
done
kill -9 "$P_PID"
start P --kv-persist "$work/journal"
read -r warm _ cached <<<"$(ttft "$P_PORT" "$work/p1.json")"
printf '%-8s %8s %8s %10.3f %10.3f %8s (target <= 0.20)\n' 1 "$n_prompt" "$cached" "$cold" "$warm" \
  "$(awk -v a="$cold" -v b="$warm" 'BEGIN{printf "%.3f", b / a}')"
echo
meta() { "$pam" inspect "$model" 2>/dev/null | awk -v k="$1" '!f && $1 ~ "\\." k "$" {print $3; f = 1}'; }
kv_heads=$(meta attention.head_count_kv)
head_dim=$(meta attention.key_length)
[ -n "$head_dim" ] || head_dim=$(($(meta embedding_length) / $(meta attention.head_count)))
echo
"$bench" --seed "$seed" --layers "$layers" --kv-heads "${kv_heads:-2}" --head-dim "${head_dim:-64}" --blocks 256 --rounds 5
