#!/usr/bin/env bash
# pam perplexity end to end on stories260K and the sampled in-domain text
# (tests/data): agreement with llama.cpp's llama-perplexity (value measured
# and recorded with its command in docs/ACCURACY.md), the JSON fields, the
# KL mode against the exact path, batch-size and KV-path invariance, and
# clear errors for bad input.
# usage: cli_perplexity.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
pam=$1 shared=$2 build=$3
here=$(cd "$(dirname "$0")" && pwd)
text=$here/data/stories260K_sampled.txt
tmp=$build/test-tmp/cli_perplexity
mkdir -p "$tmp"
fail=0
check() { # description, condition result
  if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi
}
# json FILE EXPR: evaluates a JavaScript expression over the parsed object r
json() { node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); const v = eval(process.argv[2]); if (v === false) process.exit(1); if (v !== true) console.log(v);' "$1" "$2"; }

model=$tmp/stories260K.gguf
"$pam" convert "$shared/models/stories260K/stories260K.bin" "$shared/models/stories260K/tok512.bin" -o "$model" >/dev/null
check "convert" $?

# llama.cpp's llama-perplexity on the same GGUF, text, -c 256 --chunks 16
# (docs/ACCURACY.md has the command): PPL = LLAMA_PPL.
LLAMA_PPL=2.7911
"$pam" perplexity -m "$model" -f "$text" -c 256 --chunks 16 -t 2 --json >"$tmp/p.json" 2>"$tmp/p.err"
check "perplexity --json exits 0" $?
json "$tmp/p.json" "r.n_tokens === 16 * (256 - 1 - 128) && r.n_chunks === 16 && r.ctx === 256 && r.ppl > 1 && r.ppl_stderr > 0 && r.ppl_stderr < r.ppl"
check "JSON has ppl, ppl_stderr and n_tokens = chunks * (CTX - 1 - CTX/2)" $?
json "$tmp/p.json" "Math.abs(r.ppl / $LLAMA_PPL - 1) <= 0.005"
check "PPL within 0.5% of llama-perplexity's $LLAMA_PPL (got $(json "$tmp/p.json" r.ppl))" $?

# The text report prints the same estimate.
"$pam" perplexity -m "$model" -f "$text" -c 256 --chunks 16 -t 2 >"$tmp/p.txt" 2>"$tmp/p-err.txt"
grep -q "Final estimate: PPL = $(json "$tmp/p.json" 'r.ppl.toFixed(4)') +/- " "$tmp/p.txt"
check "text report: Final estimate: PPL = X +/- Y" $?

# Token by token (a KV step between tokens) scores the same as one pass per chunk.
"$pam" perplexity -m "$model" -f "$text" -c 64 --chunks 3 -b 1 -t 2 --json >"$tmp/b1.json" 2>/dev/null
"$pam" perplexity -m "$model" -f "$text" -c 64 --chunks 3 -t 2 --json >"$tmp/b64.json" 2>/dev/null
check "batch size 1 runs" $?
json "$tmp/b1.json" "Math.abs(r.ppl / $(json "$tmp/b64.json" r.ppl) - 1) < 1e-5"
check "batch size 1 and CTX give the same PPL" $?
"$pam" perplexity -m "$model" -f "$text" -c 64 --chunks 3 -b 1 -t 2 --json --kv-tier dram:8KiB --kv-tier "ssd:$tmp:16MiB" \
  --kv-block 4 >"$tmp/b1p.json" 2>/dev/null
json "$tmp/b1p.json" "r.kv === 'paged' && Math.abs(r.ppl / $(json "$tmp/b64.json" r.ppl) - 1) < 1e-4"
check "token by token over dram + ssd tiers (migrating between steps): same PPL" $?

# KL mode: f16 KV against the exact f32 path is close; int4 KV is further.
"$pam" perplexity -m "$model" -f "$text" -c 128 --chunks 6 -t 2 --kl-divergence --json >"$tmp/kl.json" 2>/dev/null
check "--kl-divergence exits 0" $?
json "$tmp/kl.json" "r.kl_mean >= 0 && r.kl_mean < 1e-3 && r.top1_agreement > 0.98 && Math.abs(r.ppl_ratio - 1) < 0.005 && Math.abs(r.ppl_ratio - r.ppl / r.ppl_base) < 1e-4"
check "f16 KV vs exact: small KL, top-1 agreement > 98%, PPL ratio ~1" $?
"$pam" perplexity -m "$model" -f "$text" -c 128 --chunks 6 -t 2 --kl-divergence --json \
  --kv-tier dramq:int4:64MiB --kv-block 16 >"$tmp/kl4.json" 2>/dev/null
check "--kl-divergence with a paged int4 tier exits 0" $?
json "$tmp/kl4.json" "r.kv === 'paged' && r.kl_mean > 10 * $(json "$tmp/kl.json" r.kl_mean) && r.top1_agreement <= 1 && Math.abs(r.ppl_base / $(json "$tmp/kl.json" r.ppl_base) - 1) < 1e-9"
check "int4 KV: KL larger than f16's, same exact baseline" $?
"$pam" perplexity -m "$model" -f "$text" -c 128 --chunks 6 -t 2 --kl-divergence >"$tmp/kl.txt" 2>/dev/null
grep -q "Mean    KLD:" "$tmp/kl.txt" && grep -q "Same top p:" "$tmp/kl.txt" && grep -q "Mean PPL(Q)/PPL(base)" "$tmp/kl.txt"
check "text KL report" $?

# Paged f16 KV (dram tier) gives the PPL of the default path (up to the
# attention kernels' summation order).
"$pam" perplexity -m "$model" -f "$text" -c 128 --chunks 6 -t 2 --json --kv-tier dram:64MiB >"$tmp/paged.json" 2>/dev/null
json "$tmp/paged.json" "Math.abs(r.ppl / $(json "$tmp/kl.json" r.ppl) - 1) < 1e-4"
check "paged dram tier: same PPL as the default KV path" $?

# Errors.
head -c 300 "$text" >"$tmp/short.txt"
"$pam" perplexity -m "$model" -f "$tmp/short.txt" -c 128 >/dev/null 2>"$tmp/e1.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "at least 256" "$tmp/e1.txt"
check "text shorter than 2*CTX: clear error" $?
"$pam" perplexity -m "$model" -f "$tmp/nope.txt" >/dev/null 2>"$tmp/e2.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "nope.txt" "$tmp/e2.txt"
check "missing text file: error naming it" $?
"$pam" perplexity -m "$model" >/dev/null 2>"$tmp/e3.txt"
rc=$?; [ $rc -eq 2 ] && grep -q "\-f TEXT" "$tmp/e3.txt"
check "no text: says how to pass one" $?
"$pam" perplexity -m "$model" -f "$text" -c 1024 >/dev/null 2>"$tmp/e4.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "exceeds the model's context" "$tmp/e4.txt"
check "CTX above the model's context: clear error" $?
"$pam" perplexity -m "$model" -f "$text" -c 2 >/dev/null 2>"$tmp/e5.txt"
rc=$?; [ $rc -eq 2 ] && grep -q "\-c expects" "$tmp/e5.txt"
check "CTX too small rejected" $?
"$pam" perplexity -m "$model" -f "$text" --kv-policy nope >/dev/null 2>"$tmp/e6.txt"
rc=$?; [ $rc -eq 2 ] && grep -q "kv-policy" "$tmp/e6.txt"
check "bad KV flag rejected by the shared parser" $?

exit $fail
