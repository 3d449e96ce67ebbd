#!/usr/bin/env bash
# pam serve end to end over loopback HTTP: endpoints, streaming, 32
# concurrent clients equal to each alone, prefix-cache reuse in /metrics,
# log-probabilities, echo, n choices, penalties, logit_bias, /tokenize,
# every bad-input case, a full queue, client disconnects freeing the slot,
# 2000 idle connections costing no thread, an idle timeout,
# SIGTERM drain, the official openai npm client, and the tiered KV flags:
# same greedy text over two tiers, per-tier metrics, a trace, preemption of
# a running request by a higher-priority one (KV demoted, then resumed).
# usage: cli_serve.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
pam=$1 shared=$2 build=$3
tmp=$build/test-tmp/cli_serve
rm -rf "$tmp"; mkdir -p "$tmp"
. "$(dirname "$0")/serve_lib.sh"

model=$tmp/stories260K.gguf
"$pam" convert "$shared/models/stories260K/stories260K.bin" "$shared/models/stories260K/tok512.bin" -o "$model" >/dev/null
check "convert" $?

"$pam" serve -m "$model" --prefill-burst -1 2>"$tmp/burst.err"
[ $? -eq 2 ] && grep -q -- "--prefill-burst expects an integer" "$tmp/burst.err"; check "serve --prefill-burst -1 is refused" $?

start_server "$tmp/s1.log" -m "$model" -np 4 -c 256 -t 2 --queue 64 --max-body 65536 || exit 1
check "server starts on a free loopback port" 0

[ "$(req GET /health)" = 200 ] && grep -q '"ok"' "$tmp/body"
check "GET /health" $?
[ "$(req GET /v1/models)" = 200 ] && grep -q '"id":"stories260K.gguf"' "$tmp/body" && grep -q '"object":"list"' "$tmp/body"
check "GET /v1/models names the model by its file name" $?
[ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":12,"temperature":0}')" = 200 ] &&
  grep -q '"text":", there was a little girl named Lily' "$tmp/body" && grep -q '"finish_reason":"length"' "$tmp/body" &&
  grep -q '"completion_tokens":12' "$tmp/body"
check "POST /v1/completions (curl)" $?
[ "$(req POST /v1/chat/completions '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8}')" = 200 ] &&
  grep -q '"role":"assistant"' "$tmp/body" && grep -q '"usage"' "$tmp/body"
check "POST /v1/chat/completions (curl)" $?
curl -sN -m 60 "http://127.0.0.1:$PORT/v1/completions" -d '{"prompt":"The cat","max_tokens":10,"stream":true}' >"$tmp/sse"
[ "$(tail -n 2 "$tmp/sse" | head -n 1)" = "data: [DONE]" ] && [ "$(grep -c '^data: {' "$tmp/sse")" -ge 2 ] &&
  grep -q '"finish_reason":"length"' "$tmp/sse" && grep -q '"completion_tokens":10' "$tmp/sse"
check "streaming: text events, finish_reason, usage, data: [DONE]" $?

# Bad input: 400 with an OpenAI-style error object.
bad() { # description, expected status, path, body, pattern
  local got; got=$(req POST "$3" "$4")
  [ "$got" = "$2" ] && grep -q '"error":{"message":' "$tmp/body" && grep -q "$5" "$tmp/body"
  check "$1 -> $2" $?
}
bad "malformed JSON" 400 /v1/completions '{"prompt": "hi",' 'malformed JSON'
bad "not an object" 400 /v1/completions '[1,2]' 'JSON object'
bad "missing prompt" 400 /v1/completions '{"max_tokens":3}' '"param":"prompt"'
bad "prompt of the wrong type" 400 /v1/completions '{"prompt":{"a":1}}' '"param":"prompt"'
bad "max_tokens of the wrong type" 400 /v1/completions '{"prompt":"hi","max_tokens":"5"}' '"param":"max_tokens"'
bad "max_tokens out of range" 400 /v1/completions '{"prompt":"hi","max_tokens":0}' '"param":"max_tokens"'
bad "temperature out of range" 400 /v1/completions '{"prompt":"hi","temperature":5}' '"param":"temperature"'
bad "top_p out of range" 400 /v1/completions '{"prompt":"hi","top_p":0}' '"param":"top_p"'
bad "stream of the wrong type" 400 /v1/completions '{"prompt":"hi","stream":"yes"}' '"param":"stream"'
bad "stop of the wrong type" 400 /v1/completions '{"prompt":"hi","stop":[1]}' '"param":"stop"'
bad "n < 1" 400 /v1/completions '{"prompt":"hi","n":0}' '"param":"n"'
bad "n absurd" 400 /v1/completions '{"prompt":"hi","n":100000}' '"param":"n"'
bad "logprobs > 20" 400 /v1/completions '{"prompt":"hi","logprobs":21}' '"param":"logprobs"'
bad "top_logprobs > 20" 400 /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}' '"param":"top_logprobs"'
bad "logit_bias key not a token id" 400 /v1/completions '{"prompt":"hi","logit_bias":{"x1":5}}' '"param":"logit_bias"'
bad "logit_bias id beyond the vocabulary" 400 /v1/completions '{"prompt":"hi","logit_bias":{"512":5}}' '"param":"logit_bias"'
bad "logit_bias value out of range" 400 /v1/completions '{"prompt":"hi","logit_bias":{"5":-101}}' '"param":"logit_bias"'
bad "frequency_penalty out of range" 400 /v1/completions '{"prompt":"hi","frequency_penalty":3}' '"param":"frequency_penalty"'
bad "max_tokens 0 without echo" 400 /v1/completions '{"prompt":"hi","max_tokens":0}' 'only with echo'
bad "token id out of range" 400 /v1/completions '{"prompt":[1, 99999]}' 'out of range'
bad "missing messages" 400 /v1/chat/completions '{"prompt":"hi"}' '"param":"messages"'
bad "empty messages" 400 /v1/chat/completions '{"messages":[]}' '"param":"messages"'
bad "unknown role" 400 /v1/chat/completions '{"messages":[{"role":"wizard","content":"x"}]}' '"param":"messages"'
long=$(printf 'the cat sat on the mat %.0s' $(seq 60))
bad "prompt longer than the context" 400 /v1/completions "{\"prompt\":\"$long\"}" 'context_length_exceeded'
# The context is 256: 255 prompt ids leave room for one token (total 256),
# 256 are refused; prompt + max_tokens past the context is refused up front,
# saying by how much, and no client message names a source file.
ids255=$(printf '300,%.0s' $(seq 254))300
[ "$(req POST /v1/completions "{\"prompt\":[$ids255],\"ignore_eos\":true,\"temperature\":0}")" = 200 ] &&
  grep -q '"completion_tokens":1,' "$tmp/body" && grep -q '"total_tokens":256' "$tmp/body"
check "255-token prompt in a 256-token context: one token, total_tokens 256" $?
bad "256-token prompt in a 256-token context" 400 /v1/completions "{\"prompt\":[$ids255,300]}" 'context_length_exceeded'
bad "prompt + max_tokens over the context" 400 /v1/completions '{"prompt":"Once upon a time","max_tokens":253}' 'over the context of 256'
! grep -q '\.c:[0-9]' "$tmp/body"; check "client error messages carry no source location" $?
bad "tools (no tool calling)" 400 /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}' '"param":"tools"'
[ "$(req POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"tools":[],"max_tokens":2}')" = 200 ]
check "an empty tools list passes" $?
bad "response_format json_object" 400 /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}' '"param":"response_format"'
bad "functions (legacy tool calling)" 400 /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"functions":[{"name":"f"}]}' '"param":"functions"'
bad "suffix" 400 /v1/completions '{"prompt":"hi","suffix":"end"}' '"param":"suffix"'
bad "another model" 404 /v1/completions '{"model":"gpt-4","prompt":"hi"}' 'model_not_found'
[ "$(req GET /v1/completions)" = 405 ]; check "GET on a POST endpoint -> 405" $?
[ "$(req GET /nope)" = 404 ] && grep -q '"error"' "$tmp/body"; check "unknown path -> 404 error object" $?
head -c 100000 /dev/zero | tr '\0' 'a' >"$tmp/big.txt"
printf '{"prompt":"%s"}' "$(cat "$tmp/big.txt")" >"$tmp/big.json"
code=$(curl -s -m 30 -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' \
  --data-binary @"$tmp/big.json" "http://127.0.0.1:$PORT/v1/completions")
[ "$code" = 413 ] && grep -q body_too_large "$tmp/body"
check "oversized body (Content-Length) -> 413 before reading it" $?
code=$(curl -s -m 30 -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked' \
  --data-binary @"$tmp/big.json" "http://127.0.0.1:$PORT/v1/completions")
[ "$code" = 413 ] || [ "$code" = 000 ]
check "oversized chunked body -> 413 (or connection closed) while reading ($code)" $?
[ "$(req GET /health)" = 200 ]; check "server healthy after bad input" $?

# Log-probabilities, echo, n, tokenize (curl); the details are in serve_fields.mjs.
[ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":0,"echo":true,"logprobs":2}')" = 200 ] &&
  grep -q '"text":"Once upon a time"' "$tmp/body" && grep -q '"token_logprobs":\[null,-' "$tmp/body" &&
  grep -q '"top_logprobs":\[null,{' "$tmp/body" && grep -q '"completion_tokens":0' "$tmp/body"
check "echo + max_tokens 0 + logprobs: the prompt scored, first logprob null" $?
[ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":5,"n":3,"temperature":0}')" = 200 ] &&
  [ "$(grep -o '"text":", there was a little"' "$tmp/body" | wc -l)" = 3 ] && grep -q '"index":2' "$tmp/body" &&
  grep -q '"completion_tokens":15' "$tmp/body"
check "n=3 greedy: three identical choices, usage counts each" $?
[ "$(req POST /tokenize '{"content":"Once upon a time","add_special":true}')" = 200 ] &&
  grep -q '"tokens":\[1,' "$tmp/body" && [ "$(req POST /detokenize '{"tokens":[403,407]}')" = 200 ] &&
  grep -q '"content":" Once upon"' "$tmp/body"
check "POST /tokenize and /detokenize" $?
[ "$(req GET /tokenize)" = 405 ]; check "GET /tokenize -> 405" $?
[ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":4,"repetition_penalty":1.3,"repeat_last_n":-1}')" = 200 ]
check "repeat_last_n -1 (the whole context) is accepted" $?

# Node: concurrency, streaming equality, prefix cache (fetch), openai client.
if ! command -v node >/dev/null; then
  echo "FAIL: node is not installed (scripts/setup.sh installs nodejs and npm); the HTTP client tests need it"; fail=1
else
  here=$(dirname "$0")
  node "$here/serve_client.mjs" "http://127.0.0.1:$PORT" stories260K.gguf
  check "node client checks" $?
  node "$here/serve_fields.mjs" "http://127.0.0.1:$PORT"
  check "node: logprobs, echo, n, penalties, logit_bias, tokenize" $?
  nm=$build/node
  if [ ! -d "$nm/node_modules/openai" ]; then
    mkdir -p "$nm"
    npm install --prefix "$nm" --no-audit --no-fund --silent openai >"$tmp/npm.log" 2>&1 ||
      { echo "npm install openai failed (is the npm registry reachable?):"; tail -5 "$tmp/npm.log"; }
  fi
  if [ -d "$nm/node_modules/openai" ]; then
    node "$here/serve_openai.mjs" "$nm" "http://127.0.0.1:$PORT" stories260K.gguf
    check "official openai npm client: chat, streaming and not, logprobs, n, penalties, echo" $?
  else
    echo "FAIL: the openai npm package is not installed in $nm; cannot run the openai client test"; fail=1
  fi
  (ulimit -n 8192 2>/dev/null; node "$here/serve_idle.mjs" "$PORT" "$SPID" 2000)
  check "2000 idle connections: /health within 100 ms, no thread per connection, still generates" $?
fi
stop_server; check "SIGTERM on an idle server: exit 0" $?

# A slower model (one tinyllama layer, ~10 ms a token) and one slot: a full
# queue, disconnects and drain happen while a request is really running.
slow=$tmp/tl1.gguf
"$pam" gen-model --shape tinyllama-1.1b --layers 1 --type q4_0 -o "$slow" -t 2 >/dev/null 2>&1
check "gen-model (slow model)" $?
start_server "$tmp/s2.log" -m "$slow" -np 1 -c 2048 -t 2 --queue 1 --alias slow --no-warmup || exit 1
longreq='{"prompt":"hello world","max_tokens":1500,"ignore_eos":true,"temperature":0,"stream":true}'

# Clients killed while their request is generating (tokens already out).
curl -sN -m 300 "http://127.0.0.1:$PORT/v1/completions" -d "$longreq" >"$tmp/cut.sse" & c0=$!
wait_metric pam_generation_tokens_total '>=' 2; kill "$c0"; wait "$c0" 2>/dev/null
wait_metric pam_client_disconnects_total '>=' 1 && wait_metric pam_requests_running '==' 0 &&
  wait_metric 'pam_requests_total{finish_reason="cancelled"}' '>=' 1 && grep -q '^data: {' "$tmp/cut.sse"
check "streaming client disconnects mid-stream: request cancelled, slot free" $?
g0=$(metric pam_generation_tokens_total)
curl -s -m 300 "http://127.0.0.1:$PORT/v1/completions" -d '{"prompt":"hello","max_tokens":1500,"ignore_eos":true}' >/dev/null & c0=$!
wait_metric pam_generation_tokens_total '>=' $((g0 + 2)); kill "$c0"; wait "$c0" 2>/dev/null
wait_metric pam_client_disconnects_total '>=' 2 && wait_metric pam_requests_running '==' 0 &&
  wait_metric 'pam_requests_total{finish_reason="cancelled"}' '>=' 2
check "non-streaming client disconnects: request cancelled, slot free" $?
t0=$(date +%s%N)
[ "$(req POST /v1/completions '{"prompt":"hello","max_tokens":5}')" = 200 ] && grep -q '"completion_tokens":5' "$tmp/body"
check "after disconnects the slot serves the next request ($(( ($(date +%s%N) - t0) / 1000000 )) ms)" $?

curl -sN -m 30 "http://127.0.0.1:$PORT/v1/completions" -d "$longreq" >/dev/null & c1=$!
wait_metric pam_requests_running '==' 1
curl -sN -m 30 "http://127.0.0.1:$PORT/v1/completions" -d "$longreq" >/dev/null & c2=$!
wait_metric pam_queue_length '==' 1
code=$(req POST /v1/completions '{"prompt":"hello","max_tokens":5}')
[ "$code" = 503 ] && grep -qi '^Retry-After: 1' "$tmp/hdr" && grep -q queue_full "$tmp/body"
check "queue full -> 503 with Retry-After ($code)" $?
kill "$c1" "$c2" 2>/dev/null; wait "$c1" "$c2" 2>/dev/null
wait_metric pam_requests_running '==' 0 && wait_metric pam_queue_length '==' 0
check "killed clients (running and queued) free the slot and the queue" $?

curl -sN -m 600 "http://127.0.0.1:$PORT/v1/completions" \
  -d '{"prompt":"hello","max_tokens":150,"ignore_eos":true,"stream":true}' >"$tmp/drain.sse" & c3=$!
wait_metric pam_requests_running '==' 1
kill -TERM "$SPID"
for _ in $(seq 50); do [ "$(req GET /health)" = 503 ] && break; sleep 0.1; done
code=$(req GET /health); code2=$(req POST /v1/completions '{"prompt":"hello","max_tokens":5}')
[ "$code" = 503 ] && [ "$code2" = 503 ]
check "while draining: /health and new requests -> 503 ($code, $code2)" $?
wait "$c3"
grep -q '"finish_reason":"length"' "$tmp/drain.sse" && [ "$(tail -n 2 "$tmp/drain.sse" | head -n 1)" = "data: [DONE]" ] &&
  grep -q '"completion_tokens":150' "$tmp/drain.sse"
check "SIGTERM drains: the running stream completes all 150 tokens" $?
for _ in $(seq 600); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
wait "$SPID"; check "SIGTERM: exit 0 after the drain" $?
grep -q "drained" "$tmp/s2.log"; check "drain logged" $?
# Tiered KV: two dram tiers (the first small), 4-token blocks, a trace.
start_server "$tmp/s3.log" -m "$model" -np 2 -c 256 -t 2 --kv-tier dram:256KiB --kv-tier dram:4MiB --kv-block 4 \
  --kv-policy pam --kv-trace "$tmp/trace.jsonl" --timeout 2 --conn-per-client 3 || exit 1
# Connection limits: a fourth connection from one address is refused while
# three idle ones are open; an idle connection is closed after --timeout.
exec 5<>"/dev/tcp/127.0.0.1/$PORT" 6<>"/dev/tcp/127.0.0.1/$PORT" 7<>"/dev/tcp/127.0.0.1/$PORT"
sleep 0.3
[ "$(req GET /health)" = 000 ]; check "--conn-per-client 3: a fourth connection is refused" $?
read -r -t 10 -u 5 _; rc=$?
[ "$rc" -eq 1 ]; check "--timeout 2: an idle connection is closed (read rc $rc)" $?
exec 5>&- 6>&- 7>&-
[ "$(req GET /health)" = 200 ]; check "connections accepted again once the idle ones are gone" $?
grep -q "KV cache: 2 tier(s), blocks of 4 tokens, policy pam" "$tmp/s3.log"; check "serve --kv-tier: the tiers are logged" $?
ok=0
for _ in 1 2; do
  [ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":12,"temperature":0}')" = 200 ] &&
    grep -q '"text":", there was a little girl named Lily' "$tmp/body" && grep -q '"completion_tokens":12' "$tmp/body" || ok=1
done
check "two tiers: the same greedy text, fresh and from the prefix cache" $ok
[ "$(metric 'pam_kv_blocks_capacity{tier="dram"}')" -gt 0 ] && [ "$(metric 'pam_kv_blocks_capacity{tier="dram#1"}')" -gt 0 ] &&
  [ "$(metric 'pam_kv_blocks{tier="dram"}')" -gt 0 ] && [ "$(metric pam_kv_block_tokens)" = 4 ] &&
  [ "$(metric pam_prefix_cache_hits_total)" -ge 1 ] && [ "$(metric pam_prefix_cache_entries)" -ge 1 ]
check "/metrics: blocks per tier, prefix-cache hits" $?
[ "$(wc -l <"$tmp/trace.jsonl")" -ge 12 ] && grep -q '"tiers":\[{"name":"dram"' "$tmp/trace.jsonl"
check "--kv-trace: a JSON line per engine step" $?
stop_server; check "tiered server: SIGTERM exit 0" $?

# Preemption on the slow model with one slot: a priority request demotes
# the running one's KV to the slowest tier; it resumes afterwards.
start_server "$tmp/s4.log" -m "$slow" -np 1 -c 2048 -t 2 --kv-tier dram:4MiB --kv-tier dram:16MiB --alias slow || exit 1
curl -sN -m 300 "http://127.0.0.1:$PORT/v1/completions" -d "$longreq" >"$tmp/low.sse" & c4=$!
wait_metric pam_generation_tokens_total '>=' 2
[ "$(req POST /v1/completions '{"prompt":"hello","max_tokens":5,"priority":10,"temperature":0}')" = 200 ] &&
  grep -q '"completion_tokens":5' "$tmp/body" && [ "$(metric pam_preemptions_total)" = 1 ] &&
  [ "$(metric pam_kv_demoted_blocks_total)" -gt 0 ] && wait_metric pam_resumptions_total '>=' 1 &&
  wait_metric pam_requests_running '==' 1
check "a priority request preempts the running one (KV demoted), which resumes" $?
g1=$(metric pam_generation_tokens_total)
wait_metric pam_generation_tokens_total '>=' $((g1 + 2)); check "the resumed request keeps generating" $?
kill "$c4"; wait "$c4" 2>/dev/null
[ "$(req POST /v1/completions '{"prompt":"hello","priority":"high"}')" = 400 ]; check "priority must be an integer" $?
stop_server; check "preemption server: SIGTERM exit 0" $?

# Per-request sparse attention (kv_sparse): refused by a server without key
# summaries; with --kv-sparse 100% (exact by default) a request may ask for
# a budget, and "off" or the default gives the exact text.
start_server "$tmp/s5.log" -m "$model" -np 2 -c 256 -t 2 || exit 1
[ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":4,"kv_sparse":"25%"}')" = 400 ] &&
  grep -q 'kv-sparse' "$tmp/body"
check "kv_sparse without --kv-sparse on the server: 400" $?
stop_server
start_server "$tmp/s6.log" -m "$model" -np 2 -c 256 -t 2 --kv-sparse 100% || exit 1
[ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":12,"temperature":0,"kv_sparse":"off"}')" = 200 ] &&
  grep -q '"text":", there was a little girl named Lily' "$tmp/body"
check "kv_sparse off: the exact greedy text" $?
[ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":40,"temperature":0,"kv_sparse":32}')" = 200 ] &&
  grep -q '"completion_tokens":40' "$tmp/body"
check "kv_sparse 32 tokens: a sparse request completes" $?
[ "$(req POST /v1/completions '{"prompt":"hi","kv_sparse":"most"}')" = 400 ] && grep -q '"param":"kv_sparse"' "$tmp/body"
check "bad kv_sparse: 400 naming the field" $?
stop_server; check "sparse server: SIGTERM exit 0" $?
# --kv-evict: a request longer than the KV cache (64 tokens a layer) completes.
start_server "$tmp/s7.log" -m "$model" -np 1 -c 256 -t 2 --kv-tier dram:40KiB --kv-evict || exit 1
[ "$(req POST /v1/completions '{"prompt":"Once upon a time","max_tokens":150,"ignore_eos":true,"temperature":0}')" = 200 ] &&
  grep -q '"completion_tokens":150' "$tmp/body"
check "--kv-evict: a request past the cache's capacity completes" $?
stop_server; check "evicting server: SIGTERM exit 0" $?
"$pam" serve -m "$model" --kv-evict --kv-persist "$tmp/persist" >/dev/null 2>"$tmp/e-evict.txt"
[ $? -eq 2 ] && grep -q "kv-evict" "$tmp/e-evict.txt"; check "--kv-evict with --kv-persist: usage error" $?
exit $fail
