#!/usr/bin/env bash
# pam run end to end: a greedy generation on stories260K matches the llama2.c
# reference text; bad inputs give a clear message and a non-zero exit.
# usage: cli_run.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
pam=$1 shared=$2 build=$3
tmp=$build/test-tmp/cli_run
mkdir -p "$tmp"
fail=0
check() { # description, condition result
  if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi
}

model=$tmp/stories260K.gguf
"$pam" convert "$shared/models/stories260K/stories260K.bin" "$shared/models/stories260K/tok512.bin" -o "$model" >/dev/null
check "convert" $?

"$pam" run -m "$model" -p "Once upon a time" -n 40 --temp 0 -t 2 >"$tmp/out.txt" 2>"$tmp/err.txt"
check "greedy run exits 0" $?
grep -q "^Once upon a time, there was a little girl named Lily. She loved to play outside in the park." "$tmp/out.txt"
check "greedy text matches the reference" $?
grep -Eq "prompt: [0-9]+ tokens .* tok/s \| decode: [0-9]+ tokens .* tok/s" "$tmp/err.txt"
check "speed line printed" $?

# Paged KV over several tiers (dram, int8 dram, ssd) with the pam policy:
# the f16 tiers give the same greedy text.
"$pam" run -m "$model" -p "Once upon a time" -n 40 --temp 0 -t 2 --kv-tier dram:8KiB --kv-tier "ssd:$tmp:64MiB" \
  --kv-block 16 --kv-trace "$tmp/trace.jsonl" >"$tmp/paged.txt" 2>"$tmp/paged-err.txt"
check "paged KV run exits 0" $?
cmp -s "$tmp/out.txt" "$tmp/paged.txt"
check "KV over dram + ssd tiers: greedy text equals the default single dram tier" $?
grep -Eq "ssd:[^ ]* [1-9][0-9]*/[0-9]+" "$tmp/paged-err.txt"
check "blocks really live on the ssd tier" $?
[ "$(wc -l <"$tmp/trace.jsonl")" -ge 40 ] && grep -q '"importance_hist"' "$tmp/trace.jsonl"
check "KV trace has a JSON line per step" $?
"$pam" run -m "$model" -p "Once upon a time" -n 40 --temp 0 -t 2 --kv-tier dram:16KiB --kv-policy single \
  >/dev/null 2>"$tmp/single-err.txt"
rc=$?; [ $rc -ne 0 ] && grep -qi "full" "$tmp/single-err.txt"
check "single policy on a too-small tier fails cleanly" $?

# KV element types: f32 (the exact reference) gives the reference text too;
# the quantised types run; an unknown type is a usage error naming the types.
"$pam" run -m "$model" -p "Once upon a time" -n 40 --temp 0 -t 2 --kv-type f32 >"$tmp/f32.txt" 2>/dev/null
check "--kv-type f32 exits 0" $?
cmp -s "$tmp/out.txt" "$tmp/f32.txt"
check "--kv-type f32 greedy text equals the reference" $?
for t in bf16 q8 q4; do
  "$pam" run -m "$model" -p "Once upon a time" -n 8 --temp 0 -t 2 --kv-type $t >"$tmp/$t.txt" 2>"$tmp/$t-err.txt"
  rc=$?; [ $rc -eq 0 ] && grep -q "^Once upon a time" "$tmp/$t.txt"
  check "--kv-type $t runs" $?
done
# Sparse attention: a budget of the whole context is exact; a small one runs
# (approximate) and the trace counts skipped blocks; eviction lets a run go on
# past a cache too small for it; bad budgets are usage errors.
"$pam" run -m "$model" -p "Once upon a time" -n 40 --temp 0 -t 2 --kv-sparse 100% >"$tmp/sp100.txt" 2>/dev/null
check "--kv-sparse 100%: greedy text equals exact" "$(cmp -s "$tmp/out.txt" "$tmp/sp100.txt"; echo $?)"
"$pam" run -m "$model" -p "Once upon a time" -n 60 --temp 0 -t 2 --kv-sparse 32 --kv-trace "$tmp/sp.jsonl" \
  >"$tmp/sp32.txt" 2>/dev/null
rc=$?; [ $rc -eq 0 ] && [ -s "$tmp/sp32.txt" ] && grep -q '"sparse_skipped":[1-9]' "$tmp/sp.jsonl"
check "--kv-sparse 32 runs and skips blocks" $?
"$pam" run -m "$model" -p "Once upon a time" -n 100 --temp 0 -t 2 --kv-tier dram:40KiB --kv-evict \
  --kv-trace "$tmp/ev.jsonl" >"$tmp/ev.txt" 2>"$tmp/ev-err.txt"
rc=$?; [ $rc -eq 0 ] && grep -q '"evicted":[1-9]' "$tmp/ev.jsonl"
check "--kv-evict: a run past a full cache goes on, dropping blocks" $?
"$pam" run -m "$model" -p "Once upon a time" -n 100 --temp 0 -t 2 --kv-tier dram:40KiB >/dev/null 2>&1
check "without --kv-evict the same cache stops the run" "$([ $? -ne 0 ]; echo $?)"
"$pam" run -m "$model" -p hi --kv-sparse 150% >/dev/null 2>"$tmp/e-sparse.txt"
rc=$?; [ $rc -eq 2 ] && grep -q "kv-sparse" "$tmp/e-sparse.txt"
check "bad --kv-sparse: usage error" $?
"$pam" run -m "$model" -p hi --kv-place nowhere >/dev/null 2>"$tmp/e-place.txt"
rc=$?; [ $rc -eq 2 ] && grep -q "kv-place must be" "$tmp/e-place.txt"
check "bad --kv-place: usage error" $?
"$pam" run -m "$model" -p "Once upon a time" -n 40 --temp 0 -t 2 --kv-tier dram:8KiB --kv-tier "ssd:$tmp:64MiB" \
  --kv-place static >"$tmp/static.txt" 2>/dev/null
check "--kv-place static (exact attention): greedy text equals the reference" "$(cmp -s "$tmp/out.txt" "$tmp/static.txt"; echo $?)"

"$pam" run -m "$model" -p hi --kv-type f8 >/dev/null 2>"$tmp/e-kvtype.txt"
rc=$?; [ $rc -eq 2 ] && grep -q "f16" "$tmp/e-kvtype.txt" && grep -q "f8" "$tmp/e-kvtype.txt"
check "unknown --kv-type: usage error listing the types" $?

"$pam" run -m "$model" -p "The cat" -n 30 --temp 0.9 --seed 7 -t 1 >"$tmp/s1.txt" 2>/dev/null
"$pam" run -m "$model" -p "The cat" -n 30 --temp 0.9 --seed 7 -t 2 >"$tmp/s2.txt" 2>/dev/null
cmp -s "$tmp/s1.txt" "$tmp/s2.txt"
check "seeded sampling reproduces across thread counts" $?

"$pam" run -m "$tmp/does-not-exist.gguf" -p hi >/dev/null 2>"$tmp/e1.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "does-not-exist.gguf" "$tmp/e1.txt"
check "missing model: non-zero exit naming the file" $?

"$pam" run -m "$shared/models/stories260K/tok512.bin" -p hi >/dev/null 2>"$tmp/e2.txt"
rc=$?; [ $rc -ne 0 ] && grep -qi "not a GGUF file" "$tmp/e2.txt"
check "non-GGUF file: clear error" $?

# Same file with every "llama" renamed: an architecture PAM does not know.
LC_ALL=C sed 's/llama/gptjx/g' "$model" >"$tmp/gptjx.gguf"
"$pam" run -m "$tmp/gptjx.gguf" -p hi >/dev/null 2>"$tmp/e3.txt"
rc=$?; [ $rc -ne 0 ] && grep -qi "unsupported architecture 'gptjx'" "$tmp/e3.txt"
check "unsupported architecture: clear error" $?

"$pam" run -p hi >/dev/null 2>"$tmp/e4.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "\-m MODEL" "$tmp/e4.txt"
check "no model: says how to pass one" $?

"$pam" run -m "$model" -p hi --top-p 7 >/dev/null 2>"$tmp/e5.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "top-p" "$tmp/e5.txt"
check "out-of-range flag rejected" $?

"$pam" inspect "$model" >"$tmp/inspect.txt" 2>&1
rc=$?; [ $rc -eq 0 ] && grep -q "general.architecture" "$tmp/inspect.txt" && grep -q "blk.0.attn_q.weight" "$tmp/inspect.txt"
check "inspect prints metadata and tensors" $?

"$pam" inspect "$shared/models/stories260K/tok512.bin" >/dev/null 2>&1
[ $? -ne 0 ]
check "inspect of a non-GGUF file fails" $?

exit $fail
