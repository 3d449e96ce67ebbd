#!/usr/bin/env bash
# pam locality end to end on stories260K and the sampled text (tests/data):
# the JSON holds every layer and KV head with statistics that obey their
# definitions (shares ordered and bounded, the oracle never beaten, half the
# blocks hold at least half the mass), the table and the SVG picture are
# written, and bad input gives a clear error.
# usage: cli_locality.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
pam=$1 shared=$2 build=$3
here=$(cd "$(dirname "$0")" && pwd)
text=$here/data/stories260K_sampled.txt
tmp=$build/test-tmp/cli_locality
mkdir -p "$tmp"
fail=0
check() { # description, condition result
  if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi
}
json() { node -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); const v = eval(process.argv[2]); if (v === false) process.exit(1); if (v !== true) console.log(v);' "$1" "$2"; }

model=$tmp/stories260K.gguf
"$pam" convert "$shared/models/stories260K/stories260K.bin" "$shared/models/stories260K/tok512.bin" -o "$model" >/dev/null
check "convert" $?

"$pam" locality -m "$model" -f "$text" --chunks 2 -t 2 --json --svg "$tmp/loc.svg" >"$tmp/loc.json" 2>"$tmp/loc.err"
check "locality --json --svg exits 0" $?
# 5 layers x 4 KV heads; steps with >= 8 blocks of 16: 512 - 7*16 = 400 per chunk
json "$tmp/loc.json" "r.layers.length === 5 && r.layers.every(l => l.kv_heads.length === 4) && r.ctx === 512 && r.kv_block === 16 && r.layers[0].stats.steps === 800 && r.overall.steps === 4000"
check "every layer and KV head, 400 measured steps per chunk" $?
all_stats='[r.overall].concat(r.layers.map(l => l.stats), ...r.layers.map(l => l.kv_heads))'
json "$tmp/loc.json" "$all_stats.every(s => { const t = s.top_share; return 0 < t['1'] && t['1'] <= t['5'] && t['5'] <= t['10'] && t['10'] <= t['25'] && t['25'] <= 1 + 1e-9 && s.sink >= 0 && s.recent <= 1 + 1e-9 && s.sink <= t['25'] + 1e-9; })"
check "concentration shares ordered and within [0, 1]" $?
json "$tmp/loc.json" "$all_stats.every(s => Object.values(s.capture).every(c => c.every((v, i) => v >= 0 && v <= s.capture.oracle[i] + 1e-6 && (i === 0 || v >= c[i - 1] - 1e-6))))"
check "no predictor beats the oracle; capture grows with the budget" $?
json "$tmp/loc.json" "$all_stats.every(s => s.capture.oracle[3] >= 0.5 - 1e-6)"
check "the top half of the blocks holds at least half the mass" $?
json "$tmp/loc.json" "$all_stats.every(s => Object.values(s.jaccard_top10).every(j => j >= 0 && j <= 1)) && r.overall.jaccard_top10['1'] >= r.overall.jaccard_top10['64']"
check "hot-set Jaccard in [0, 1], no more stable 64 steps ahead than 1" $?
# The sr+ predictors take the sink and the two newest blocks first: with a
# budget of 3+ blocks they capture at least the recent window's share.
json "$tmp/loc.json" "$all_stats.every(s => s.capture['sr+bound'][3] >= s.recent - 1e-6 && s.capture['sr+ema0.9'][3] >= s.recent - 1e-6)"
check "sink+recent predictors capture at least the recent window" $?

grep -q "^<svg " "$tmp/loc.svg" && grep -q "</svg>" "$tmp/loc.svg" && [ "$(grep -c "<rect" "$tmp/loc.svg")" -gt 1000 ] \
  && grep -q "layer 4" "$tmp/loc.svg" && grep -q "oracle" "$tmp/loc.svg"
check "SVG with heatmaps for every layer and the predictor chart" $?
if command -v python3 >/dev/null 2>&1; then
  python3 -c 'import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])' "$tmp/loc.svg"
  check "SVG is well-formed XML" $?
fi

"$pam" locality -m "$model" -f "$text" --chunks 1 -c 256 --kv-block 32 -t 2 >"$tmp/loc.txt" 2>/dev/null
rc=$?; [ $rc -eq 0 ] && grep -Eq "^all +[0-9.]+%" "$tmp/loc.txt" && grep -q "^oracle" "$tmp/loc.txt" \
  && grep -q "^sr+bound" "$tmp/loc.txt" && grep -Eq "^4\.3 " "$tmp/loc.txt"
check "table: layers, overall, KV heads and predictors" $?

# Errors.
"$pam" locality -m "$model" -f "$text" -c 64 >/dev/null 2>"$tmp/e1.txt"
rc=$?; [ $rc -eq 2 ] && grep -q "fewer than 8 blocks" "$tmp/e1.txt"
check "context under 8 blocks: clear error" $?
head -c 300 "$text" >"$tmp/short.txt"
"$pam" locality -m "$model" -f "$tmp/short.txt" >/dev/null 2>"$tmp/e2.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "fewer than one chunk" "$tmp/e2.txt"
check "text shorter than a chunk: clear error" $?
"$pam" locality -m "$model" -f "$text" --chunks 1 --svg "$tmp/no/such/dir/x.svg" >/dev/null 2>"$tmp/e3.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "cannot write" "$tmp/e3.txt"
check "unwritable SVG path: clear error" $?
"$pam" locality -m "$model" -f "$text" --chunks 1 --trace-out "$tmp/no/such/dir/x.trace" >/dev/null 2>"$tmp/e5.txt"
rc=$?; [ $rc -ne 0 ] && grep -q "cannot write the locality trace" "$tmp/e5.txt"
check "unwritable trace path: clear error" $?
# The trace: a 32-byte header and, per chunk, step and layer, one u16 per block
# (1 chunk x 5 layers x sum over 512 steps of (t/16 + 1) = 8448 values).
"$pam" locality -m "$model" -f "$text" --chunks 1 -t 2 --trace-out "$tmp/loc.trace" >/dev/null 2>&1
rc=$?; [ $rc -eq 0 ] && [ "$(wc -c <"$tmp/loc.trace")" -eq $((32 + 2 * 5 * 8448)) ] && head -c 8 "$tmp/loc.trace" | grep -q PAMLOCT1
check "--trace-out writes the documented size and magic" $?
"$pam" locality -f "$text" >/dev/null 2>"$tmp/e4.txt"
rc=$?; [ $rc -eq 2 ] && grep -q "\-m MODEL" "$tmp/e4.txt"
check "no model: says how to pass one" $?

exit $fail
