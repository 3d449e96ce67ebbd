#!/usr/bin/env bash
# pam bench kv: the three policies run over a tiny model whose KV spans two
# tiers; --json gives one record per policy, `single` on a tier too small
# reports that it does not fit (not a crash), the trace has one JSON line per
# step and policy, the SVG plot is well-formed, and a replayed locality trace
# puts more of the attended bytes in the fastest tier with importance
# placement than with static placement.
# usage: cli_bench_kv.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
PAM="$1"
TMP="$3/test-tmp"
mkdir -p "$TMP"
MODEL="$TMP/bench-kv-tiny.gguf"
fail() { echo "FAIL: $*"; exit 1; }

"$PAM" gen-model --shape tiny --type q8_0 -o "$MODEL" >/dev/null || fail "gen-model exited with $?"

err=$("$PAM" bench kv 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bench kv without a model: exit $rc"
err=$("$PAM" bench kv -m "$MODEL" --policy pam,nope 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad policy: exit $rc"
echo "$err" | grep -q "got 'pam,nope'" || fail "bad policy message: $err"
err=$("$PAM" bench kv -m "$MODEL" --kv-tier nope:1 --depth 16 -n 1 --bw-mib 64 2>&1); rc=$?
[ $rc -eq 1 ] || fail "bad tier spec: exit $rc"
echo "$err" | grep -q "nope" || fail "bad tier spec message: $err"

rm -f "$TMP/kv.trace" "$TMP/kv.svg"
# 2 layers x 2 seqs x 32 blocks of 16 tokens: 128 blocks, 2 KiB each in f16;
# dram holds 40 of them.
out=$("$PAM" bench kv -m "$MODEL" -t 2 --seqs 2 --depth 500 -n 3 --bw-mib 64 \
      --kv-tier dram:80KiB --kv-tier dramq:int8:1MiB --single-tier dram:80KiB \
      --trace "$TMP/kv.trace" --svg "$TMP/kv.svg" --json 2>"$TMP/kv.err") \
    || fail "bench kv exited with $?: $(cat "$TMP/kv.err")"
echo "$out"
[ "$(printf '%s\n' "$out" | head -n 1)" = "[" ] || fail "JSON does not start with '['"
[ "$(printf '%s\n' "$out" | tail -n 1)" = "]" ] || fail "JSON does not end with ']'"
[ "$(printf '%s\n' "$out" | grep -c '^  {"policy": ')" -eq 3 ] || fail "expected 3 records"
printf '%s\n' "$out" | grep -q '"policy": "pam", "ran": true' || fail "pam did not run"
printf '%s\n' "$out" | grep -q '"policy": "offload", "ran": true' || fail "offload did not run"
printf '%s\n' "$out" | grep -q '"policy": "single", "ran": false.*"note": "does not fit: ' \
    || fail "single on a small tier should report that it does not fit"
printf '%s\n' "$out" | grep -q '"speedup_vs_offload": [0-9]' || fail "no pam/offload ratio"
# offload stages blocks every step; pam reads both tiers in place
printf '%s\n' "$out" | grep '"policy": "offload"' | grep -qE '"staged_bytes_per_step": [1-9]' \
    || fail "offload staged nothing"
[ "$(printf '%s\n' "$out" | grep -cE '"cpu_ms_per_step": [0-9.]*[1-9]')" -eq 2 ] || fail "no CPU time per step"
printf '%s\n' "$out" | grep '"policy": "pam"' | grep -qE '"name": "dramq:int8", "read_gbps": [0-9.]+, "blocks": [0-9.]+, "bytes_read_per_step": [1-9]' \
    || fail "pam read nothing from the dramq tier"
if command -v python3 >/dev/null 2>&1; then
    printf '%s\n' "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert len(r)==3' \
        || fail "python3 cannot parse the JSON"
fi

# Trace: (2 warmup + 3 timed) steps for each policy that ran.
[ "$(grep -c '^{"step":' "$TMP/kv.trace")" -eq 10 ] || fail "trace: expected 10 lines, got $(wc -l <"$TMP/kv.trace")"
[ "$(grep -c '"policy":"pam"' "$TMP/kv.trace")" -eq 5 ] || fail "trace: expected 5 pam lines"
grep -q '"tiers":\[{"name":"dram","blocks":' "$TMP/kv.trace" || fail "trace: no per-tier records"
grep -q '"importance_hist":\[' "$TMP/kv.trace" || fail "trace: no importance histogram"

# Plot: an SVG with a row of panels per policy that ran.
head -c 4 "$TMP/kv.svg" | grep -q '<svg' || fail "plot is not an SVG"
tail -n 1 "$TMP/kv.svg" | grep -q '</svg>' || fail "plot is truncated"
[ "$(grep -c '<polyline' "$TMP/kv.svg")" -eq 8 ] || fail "plot: expected 8 lines (2 policies x 2 panels x 2 tiers)"
if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])' "$TMP/kv.svg" \
        || fail "plot is not well-formed XML"
fi

# Table form: one row per policy and the ratio.
table=$("$PAM" bench kv -m "$MODEL" -t 1 --seqs 1 --depth 100 -n 2 --bw-mib 64 --kv-tier dram:20KiB \
        --kv-tier dram:1MiB --policy pam,offload) || fail "table bench exited with $?"
echo "$table"
echo "$table" | grep -qE '^\| pam +\| +[0-9.]+ \|' || fail "table lacks the pam row"
echo "$table" | grep -qE '^\| offload +\| +[0-9.]+ \|' || fail "table lacks the offload row"
echo "$table" | grep -q '^pam / offload: ' || fail "table lacks the ratio"

# pam-nora: pam without read-ahead hints, beside pam (an ssd tier takes the hints).
mkdir -p "$TMP/kv-ssd"
table=$("$PAM" bench kv -m "$MODEL" -t 2 --seqs 2 --depth 200 -n 2 --bw-mib 64 --kv-tier dram:20KiB \
        --kv-tier "ssd:$TMP/kv-ssd:4MiB" --policy pam-nora,pam 2>"$TMP/kv.err") \
    || fail "pam-nora bench exited with $?: $(cat "$TMP/kv.err")"
echo "$table"
echo "$table" | grep -qE '^\| pam-nora +\| +[0-9.]+ \|' || fail "table lacks the pam-nora row"
echo "$table" | grep -qE '^\| pam +\| +[0-9.]+ \|' || fail "table lacks the pam row"
# The ssd tier is calibrated before and after each policy: both rates shown,
# and the bound's rate is the faster one.
for p in pam-nora pam; do
    row=$(echo "$table" | grep -E "^\| $p +\| ssd:") || fail "no ssd tier row for $p"
    echo "$row" | awk -F'|' '{ split($5, ba, "/"); g = $4 + 0; b = ba[1] + 0; a = ba[2] + 0;
        m = b > a ? b : a; exit !(b > 0 && a > 0 && g > 0 && g == m) }' \
        || fail "$p: the ssd tier's rates before/after are missing or the bound does not use the faster: $row"
done
# Sparse attention side by side with exact and the three placements: each
# run is a row; sparse reads fewer bytes than exact; a bad budget is refused.
table=$("$PAM" bench kv -m "$MODEL" -t 2 --seqs 2 --depth 400 -n 2 --bw-mib 64 --kv-tier dram:20KiB \
        --kv-tier "ssd:$TMP/kv-ssd:4MiB" --kv-sparse 25% --policy pam,pam-recency,pam-static,pam-exact \
        2>"$TMP/kv.err") || fail "sparse bench exited with $?: $(cat "$TMP/kv.err")"
echo "$table"
for p in pam pam-recency pam-static pam-exact; do
    echo "$table" | grep -qE "^\| $p +\| +[0-9.]+ \|" || fail "table lacks the $p row"
done
echo "$table" | grep -q "pam (sparse) / pam-exact: " || fail "no sparse/exact ratio"
mb() { echo "$table" | awk -F'|' -v p="$1" '$2 ~ "^ "p" +$" && $3 ~ /ssd:/ { print $7 + 0 }'; }
awk -v s="$(mb pam-static)" -v e="$(mb pam-exact)" 'BEGIN { exit !(s > 0 && s < e) }' \
    || fail "sparse (static) should read fewer ssd bytes than exact: $(mb pam-static) vs $(mb pam-exact)"
err=$("$PAM" bench kv -m "$MODEL" --kv-sparse 0% 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$err" | grep -q "kv-sparse" || fail "bad --kv-sparse: exit $rc: $err"

# Replay: a pam locality trace of stories260K on real text drives which
# blocks are hot; with importance placement the fastest tier serves a larger
# share of the attended bytes than with static placement (counted bytes, not
# timing). A file that is not a trace is refused.
S260="$TMP/bench-kv-stories260K.gguf"
"$PAM" convert "$2/models/stories260K/stories260K.bin" "$2/models/stories260K/tok512.bin" -o "$S260" >/dev/null \
    || fail "convert stories260K"
"$PAM" locality -m "$S260" -f "$(dirname "$0")/data/stories260K_sampled.txt" -t 2 --chunks 2 --json \
    --trace-out "$TMP/kv-replay.trace" >/dev/null 2>"$TMP/kv.err" || fail "locality --trace-out: $(cat "$TMP/kv.err")"
out=$("$PAM" bench kv -m "$MODEL" -t 2 --seqs 2 --depth 400 -n 3 --warmup 6 --bw-mib 16 --kv-tier dram:50KiB \
      --kv-tier "ssd:$TMP/kv-ssd:4MiB" --kv-sparse 25% --policy pam,pam-static --kv-replay "$TMP/kv-replay.trace" \
      --json 2>"$TMP/kv.err") || fail "replay bench exited with $?: $(cat "$TMP/kv.err")"
echo "$out"
grep -q "replay: .*kv-replay.trace (5 layers, block 16, context 512, 2 chunks)" "$TMP/kv.err" || fail "no replay line"
share() { printf '%s\n' "$out" | grep "\"policy\": \"$1\"" | sed 's/.*"fastest_tier_share": \([0-9.]*\).*/\1/'; }
awk -v p="$(share pam)" -v s="$(share pam-static)" 'BEGIN { exit !(p > 0 && s > 0 && p > s) }' \
    || fail "replay: importance placement's fastest-tier share $(share pam) should exceed static's $(share pam-static)"
err=$("$PAM" bench kv -m "$MODEL" --depth 16 -n 1 --bw-mib 16 --kv-replay "$MODEL" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "not a locality trace" || fail "bad --kv-replay: exit $rc: $err"
echo "PASS"
