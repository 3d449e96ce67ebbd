#!/usr/bin/env bash
# pam sim: --json gives one record per system with the documented fields;
# --dump-config round-trips through --config to the same numbers; a trace
# written by the engine (pam bench kv --trace) drives importance; the same
# seed gives the same output; the SVG is well-formed; bad flags, a bad config
# and a bad trace are clear errors.
# usage: cli_sim.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
PAM="$1"
TMP="$3/test-tmp"
mkdir -p "$TMP"
fail() { echo "FAIL: $*"; exit 1; }

err=$("$PAM" sim --systems pam,nope 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad system: exit $rc"
echo "$err" | grep -q "got 'pam,nope'" || fail "bad system message: $err"
err=$("$PAM" sim --model gpt-9 2>&1); rc=$?
[ $rc -eq 1 ] || fail "unknown model: exit $rc"
echo "$err" | grep -q "unknown model 'gpt-9'" || fail "unknown model message: $err"
err=$("$PAM" sim --model qwen2.5-33b 2>&1); rc=$?
[ $rc -eq 1 ] || fail "misspelt model: exit $rc"
echo "$err" | grep -q "unknown model 'qwen2.5-33b'" || fail "misspelt model message: $err"
printf 'not a gguf' >"$TMP/sim-bad.gguf"
err=$("$PAM" sim --model "$TMP/sim-bad.gguf" 2>&1); rc=$?
[ $rc -eq 1 ] || fail "bad GGUF: exit $rc"
err=$("$PAM" sim --batch 0 2>&1); rc=$?
[ $rc -eq 2 ] || fail "batch 0: exit $rc"

"$PAM" sim --dump-config >"$TMP/sim.json" || fail "dump-config exited with $?"
grep -q '"hbm3_pim"' "$TMP/sim.json" || fail "no hbm3_pim in the config"
grep -q '"sources"' "$TMP/sim.json" || fail "no sources in the config"
sed 's/"capacity_gb": 64/"capacity_gb": -1/' "$TMP/sim.json" >"$TMP/sim-bad.json"
err=$("$PAM" sim --config "$TMP/sim-bad.json" 2>&1); rc=$?
[ $rc -eq 1 ] || fail "bad config: exit $rc"
echo "$err" | grep -q "capacity_gb" || fail "bad config message: $err"

args=(--model qwen2.5-32b --systems gpu,offload,pam,pam-noru --batch 32 --context 32768 --steps 8 --warmup 4)
out=$("$PAM" sim "${args[@]}" --json 2>"$TMP/sim.err") || fail "sim exited with $?: $(cat "$TMP/sim.err")"
echo "$out"
[ "$(printf '%s\n' "$out" | head -n 1)" = "[" ] || fail "JSON does not start with '['"
[ "$(printf '%s\n' "$out" | tail -n 1)" = "]" ] || fail "JSON does not end with ']'"
[ "$(printf '%s\n' "$out" | grep -c '^  {"model": "qwen2.5-32b", "system": ')" -eq 4 ] || fail "expected 4 records"
for f in tokens_per_second tpot_ms joules_per_token batch context max_batch energy_per_token_j tiers; do
  [ "$(printf '%s\n' "$out" | grep -c "\"$f\": ")" -eq 4 ] || fail "field $f missing"
done
printf '%s\n' "$out" | grep -q '"system": "pam", .*"ok": true' || fail "pam did not run"
again=$("$PAM" sim --config "$TMP/sim.json" "${args[@]}" --json 2>/dev/null) || fail "sim --config exited with $?"
[ "$out" = "$again" ] || fail "--dump-config then --config changed the numbers"

# a stream, twice with one seed, once with another
s1=$("$PAM" sim --model llama-3-8b --systems pam --rate 20 --duration 30 --seed 3 --json 2>/dev/null) || fail "stream"
s2=$("$PAM" sim --model llama-3-8b --systems pam --rate 20 --duration 30 --seed 3 --json 2>/dev/null) || fail "stream"
s3=$("$PAM" sim --model llama-3-8b --systems pam --rate 20 --duration 30 --seed 4 --json 2>/dev/null) || fail "stream"
[ "$s1" = "$s2" ] || fail "same seed, different output"
[ "$s1" != "$s3" ] || fail "another seed, same output"
printf '%s\n' "$s1" | grep -q '"requests_done": [1-9]' || fail "no request finished"

# importance from the engine's own trace
MODEL="$TMP/sim-tiny.gguf"
"$PAM" gen-model --shape tiny --type q8_0 -o "$MODEL" >/dev/null || fail "gen-model exited with $?"
"$PAM" bench kv -m "$MODEL" -t 2 --seqs 2 --depth 500 -n 3 --bw-mib 64 --policy pam \
    --kv-tier dram:80KiB --kv-tier dramq:int8:1MiB --trace "$TMP/sim.trace" >/dev/null 2>&1 || fail "bench kv trace"
out=$("$PAM" sim --trace "$TMP/sim.trace" --model "$MODEL" --systems pam --batch 4 --context 4096 --steps 4 2>&1) \
    || fail "sim --trace exited with $?: $out"
echo "$out" | grep -q "locality: trace sim.trace (5 steps)" || fail "trace not used: $out"
echo '{"step":0}' >"$TMP/sim-bad.trace"
err=$("$PAM" sim --trace "$TMP/sim-bad.trace" 2>&1); rc=$?
[ $rc -eq 1 ] || fail "bad trace: exit $rc"
echo "$err" | grep -q "line 1" || fail "bad trace message: $err"

rm -f "$TMP/sim.svg"
"$PAM" sim --model llama-3-70b --batch 16 --context 16384 --steps 4 --warmup 2 --svg "$TMP/sim.svg" >/dev/null \
    || fail "sim --svg exited with $?"
head -c 4 "$TMP/sim.svg" | grep -q '<svg' || fail "svg does not start with <svg"
tail -n 1 "$TMP/sim.svg" | grep -q '</svg>' || fail "svg not closed"
[ "$(grep -c '<polyline' "$TMP/sim.svg")" -eq 6 ] || fail "expected 2 panels x 3 systems of lines"
echo "ok"
