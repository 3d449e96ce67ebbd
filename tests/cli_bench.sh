#!/usr/bin/env bash
# pam gen-model + pam bench: a tiny random model loads and benchmarks, and
# --json prints one well-formed record per test with every field.
# usage: cli_bench.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
PAM="$1"
TMP="$3/test-tmp"
mkdir -p "$TMP"
MODEL="$TMP/bench-tiny.gguf"
fail() { echo "FAIL: $*"; exit 1; }

"$PAM" gen-model --shape tiny --type q8_0 -o "$MODEL" || fail "gen-model exited with $?"
[ -s "$MODEL" ] || fail "gen-model wrote no file"

# Usage errors exit with 2 and say what is wrong.
err=$("$PAM" gen-model --shape nope --type q8_0 -o "$TMP/x.gguf" 2>&1); rc=$?
[ $rc -eq 2 ] || fail "unknown shape: exit $rc"
echo "$err" | grep -q "unknown shape 'nope'" || fail "unknown shape message: $err"
err=$("$PAM" gen-model --shape tiny --type q5_1 -o "$TMP/x.gguf" 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad type: exit $rc"
err=$("$PAM" bench 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bench without a model: exit $rc"
err=$("$PAM" bench -m "$MODEL" --depth 1,x 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad depth list: exit $rc"

out=$("$PAM" bench -m "$MODEL" -t 2 --depth 0,64 -n 4 --prompt 32 --bw-mib 64 --json 2>"$TMP/bench.err") \
    || fail "bench exited with $?: $(cat "$TMP/bench.err")"
# The CPU model and the per-machine kernel choice, one variant per kernel.
grep -q "^cpu: ." "$TMP/bench.err" || fail "no cpu line: $(cat "$TMP/bench.err")"
grep -Eq "^kernels:( [A-Za-z0-9_.]+=[A-Za-z0-9_.-]+\((timed|cached|only|untimed)\))+$" "$TMP/bench.err" \
    || fail "no kernels line: $(cat "$TMP/bench.err")"
grep -q "matvec.q8_0=" "$TMP/bench.err" || fail "kernels line lacks matvec.q8_0"
echo "$out"
# Only JSON on stdout: an array of three records.
first=$(printf '%s\n' "$out" | head -n 1)
last=$(printf '%s\n' "$out" | tail -n 1)
[ "$first" = "[" ] || fail "JSON does not start with '[': $first"
[ "$last" = "]" ] || fail "JSON does not end with ']': $last"
records=$(printf '%s\n' "$out" | grep -c '^  {.*}')
[ "$records" -eq 3 ] || fail "expected 3 records, got $records"
num='-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?'
for key in depth batch threads tokens_per_second bytes_per_step bytes_per_token achieved_gbps bandwidth_gbps cpu_ms_per_step; do
    n=$(printf '%s\n' "$out" | grep -cE "\"$key\": $num[,}]")
    [ "$n" -eq 3 ] || fail "field $key is missing or not a number in some record ($n of 3)"
done
[ "$(printf '%s\n' "$out" | grep -c '"test": "decode"')" -eq 2 ] || fail "expected 2 decode records"
[ "$(printf '%s\n' "$out" | grep -c '"test": "prefill"')" -eq 1 ] || fail "expected 1 prefill record"
printf '%s\n' "$out" | grep -q '"test": "decode", "depth": 64,' || fail "no decode record at depth 64"
printf '%s\n' "$out" | grep -q '"threads": 2,' || fail "thread count not reported"
# Rates are positive.
if printf '%s\n' "$out" | grep -qE '"(tokens_per_second|bandwidth_gbps)": (0(\.0+)?|-)[,}]'; then
    fail "a rate is zero or negative"
fi
# Records are separated by commas: every record line but the last ends with '},'.
[ "$(printf '%s\n' "$out" | grep -c '^  {.*},$')" -eq 2 ] || fail "records are not comma-separated"
if command -v python3 >/dev/null 2>&1; then
    printf '%s\n' "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert len(r)==3' \
        || fail "python3 cannot parse the JSON"
fi

# --batch N decodes N sequences per step: the records say so, and each step
# reads the weights once plus every sequence's KV, so at depth 64 a step of 3
# reads more than a step of 1 but far less than 3 steps. --kv-type f32 reads
# twice the KV bytes of f16.
b1=$("$PAM" bench -m "$MODEL" -t 2 --depth 64 -n 2 --prompt 0 --bw-mib 64 --json 2>/dev/null) || fail "bench batch 1 failed"
b3=$("$PAM" bench -m "$MODEL" -t 2 --depth 64 -n 2 --prompt 0 --bw-mib 64 --batch 3 --json 2>"$TMP/b3.err") \
    || fail "bench --batch 3 exited with $?: $(cat "$TMP/b3.err")"
f32=$("$PAM" bench -m "$MODEL" -t 2 --depth 64 -n 2 --prompt 0 --bw-mib 64 --kv-type f32 --json 2>/dev/null) \
    || fail "bench --kv-type f32 failed"
printf '%s\n' "$b3" | grep -q '"batch": 3,' || fail "batch not reported: $b3"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$b1" "$b3" "$f32" <<'PY' || fail "batch / kv-type byte accounting"
import json, sys
b1, b3, f32 = (json.loads(a)[0] for a in sys.argv[1:])
one, three = b1["bytes_per_step"], b3["bytes_per_step"]
# one = W + E + K (weights, one embedding row, one sequence's f16 KV);
# three = W + 3E + 3K; f32 = W + E + 2K.
k = f32["bytes_per_step"] - one
assert k > 0, ("f32 KV is not larger than f16", one, f32)
e2 = (three - one) - 2 * k
assert 0 < e2 < 0.01 * one, ("batch of 3 does not add two sequences' KV and rows", one, three, k)
PY
fi
err=$("$PAM" bench -m "$MODEL" --batch 0 2>&1); rc=$?
[ $rc -eq 2 ] || fail "--batch 0: exit $rc"
err=$("$PAM" bench -m "$MODEL" --kv-type f8 2>&1); rc=$?
[ $rc -eq 2 ] || fail "--kv-type f8: exit $rc"

# The table form prints the bandwidth and one row per test.
table=$("$PAM" bench -m "$MODEL" -t 1 --depth 16 -n 2 --prompt 8 --bw-mib 64) || fail "table bench exited with $?"
echo "$table"
echo "$table" | grep -q "memory read bandwidth:" || fail "table lacks the bandwidth"
echo "$table" | grep -qE '^\| decode +\| +16 \|' || fail "table lacks the decode row"
echo "$table" | grep -qE '^\| prefill ' || fail "table lacks the prefill row"
echo "PASS"
