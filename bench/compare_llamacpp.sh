#!/usr/bin/env bash
# Side-by-side decode and prefill speed of PAM and llama.cpp's llama-bench on
# the same GGUF file, same threads and depths, measured alternately in one run
# (the machine is shared and noisy: only ratios from one run are meaningful).
#
#   bench/compare_llamacpp.sh LLAMA_BENCH MODEL.gguf [THREADS] [DEPTHS] [ROUNDS]
#
# LLAMA_BENCH is a llama-bench binary built from llama.cpp's public source
# (outside this repository). Needs python3 to merge the JSON outputs.
set -euo pipefail
llama_bench=$1 model=$2 threads=${3:-2} depths=${4:-0,4096,16384} rounds=${5:-2}
pam=${PAM_BIN:-$(dirname "$0")/../build/pam}
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  "$pam" bench -m "$model" -t "$threads" --depth "$depths" -n 16 --prompt 512 --json 2>/dev/null >"$out/pam-$r.json"
  "$llama_bench" -m "$model" -t "$threads" -d "$depths" -n 16 -p 512 -r 1 -o json 2>/dev/null >"$out/llama-$r.json"
done
python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
pam, ll = {}, {}
for r in range(1, rounds + 1):
    for rec in json.load(open(f"{out}/pam-{r}.json")):
        key = (rec["test"], rec["depth"])
        pam.setdefault(key, []).append(rec["tokens_per_second"])
        bw = rec["bandwidth_gbps"]; bpt = rec["bytes_per_token"]
        pam.setdefault(("bpt",) + key, []).append(bpt)
        pam.setdefault(("bw",), []).append(bw)
    for rec in json.load(open(f"{out}/llama-{r}.json")):
        test = "prefill" if rec["n_gen"] == 0 else "decode"
        depth = rec.get("n_depth", 0)
        if test == "prefill" and depth != 0: continue
        ll.setdefault((test, depth), []).append(rec["avg_ts"])
bw = statistics.median(pam[("bw",)])
print(f"measured read bandwidth (pam bench): {bw:.1f} GB/s; median of {rounds} alternating rounds\n")
print("| test    | depth | llama.cpp tok/s | PAM tok/s | PAM / llama.cpp | PAM GB/s | PAM % of bw |")
print("|---------|-------|-----------------|-----------|-----------------|----------|-------------|")
for key in sorted(k for k in pam if k[0] in ("decode", "prefill")):
    p = statistics.median(pam[key]); l = statistics.median(ll.get(key, [float("nan")]))
    gbps = p * statistics.median(pam[("bpt",) + key]) / 1e9
    print(f"| {key[0]:7} | {key[1]:5} | {l:15.2f} | {p:9.2f} | {p / l:15.2f} | {gbps:8.1f} | {100 * gbps / bw:10.1f}% |")
PY
rm -rf "$out"
