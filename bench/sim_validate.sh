#!/usr/bin/env bash
# Does `pam sim` predict this machine? Runs `pam bench kv` (policies pam,
# offload, single) on five configurations, describes this machine to the
# simulator from the first two (calibration) and predicts all five; prints
# predicted and measured ms per step side by side (docs/SIM.md, Validation).
#
#   [REPEAT=N] [METRIC=wall|cpu] [BW_GBPS=X] bench/sim_validate.sh PAM_BINARY MODEL.gguf [THREADS] [STEPS]
#
# This machine as the simulator sees it (shared_compute: the CPU is the only
# compute engine, so tiers' attention and offload's copies run one after
# another):
#   "gpu"   the CPU: the dense layers' time from `single` at depth 2048 (bound
#           by the weight stream, about the same at 2 to 8 sequences), the
#           attention rate from `single` at 2048 vs 8192;
#   dram    f16 KV in host memory: read at the bandwidth `pam bench kv`
#           measures, attended at the CPU's attention rate;
#   dramq   int8 KV: its attention rate (the "PIM" rate of a device whose
#           units are the same cores) from `pam` at 8192, and its copy rate
#           into offload's f16 staging (decode + re-encode) from `offload`.
# Needs jq. Writes its scratch files under ${TMPDIR:-/tmp}/pam-sim-validate.
set -euo pipefail
PAM=${1:?usage: sim_validate.sh PAM_BINARY MODEL.gguf [THREADS] [STEPS]}
MODEL=${2:?usage: sim_validate.sh PAM_BINARY MODEL.gguf [THREADS] [STEPS]}
THREADS=${3:-2}
STEPS=${4:-3}
REPEAT=${REPEAT:-1} # runs per configuration; the fastest counts
METRIC=${METRIC:-wall} # wall: ms per step as pam bench kv reports it; cpu: CPU time per step / threads
DIR=${TMPDIR:-/tmp}/pam-sim-validate
mkdir -p "$DIR"
command -v jq >/dev/null || { echo "sim_validate: needs jq" >&2; exit 1; }

# name seqs depth dram-fraction(0: the bench's default, a quarter)
CONFIGS=("c1 4 2048 0" "c2 4 8192 0" "c3 2 4096 0" "c4 8 2048 0" "c5 4 4096 2")

sim_json=$("$PAM" sim --model "$MODEL" --systems gpu --batch 1 --context 16 --steps 1 --warmup 0 --json 2>/dev/null)
W=$(jq '.[0].weight_bytes' <<<"$sim_json")
PARAMS=$(jq '.[0].params' <<<"$sim_json")
KVT=$(jq '.[0].kv_bytes_per_token' <<<"$sim_json")

bench() { # name seqs depth frac
  local tiers=() r
  if [ "$4" != 0 ]; then
    local kv=$(( $2 * ($3 + 2 + STEPS) * ${KVT%.*} ))
    tiers=(--kv-tier "dram:$(( kv / $4 ))" --kv-tier "dramq:int8:$kv")
  fi
  for r in $(seq 1 "$REPEAT"); do
    [ -s "$DIR/$1.r$r.json" ] || "$PAM" bench kv -m "$MODEL" -t "$THREADS" --seqs "$2" --depth "$3" -n "$STEPS" \
        --policy pam,offload,single "${tiers[@]}" --json >"$DIR/$1.r$r.json" 2>"$DIR/$1.r$r.log"
  done
  jq -s '[.[][]]' "$DIR/$1".r*.json >"$DIR/$1.all.json"
  jq -s '[.[][] | .bandwidth_gbps] | max' "$DIR/$1".r*.json >"$DIR/$1.bw"
}
for c in "${CONFIGS[@]}"; do bench $c; done
# attention locality of this workload, from a short run's trace: the simulator
# scales it to each configuration's context (docs/SIM.md, Importance)
[ -s "$DIR/locality.trace" ] || "$PAM" bench kv -m "$MODEL" -t "$THREADS" --seqs 2 --depth 1024 -n 2 --policy pam \
    --trace "$DIR/locality.trace" --json >/dev/null 2>"$DIR/locality.log"

# ms per step of a policy: the fastest of the repeats (the one least disturbed
# by other load); METRIC=cpu: process CPU time per step / threads, what the
# step takes with the cores to itself, for a machine shared with other jobs
ms() {
  jq -r --arg p "$2" --arg m "$METRIC" --argjson th "$THREADS" \
    '[.[] | select(.policy == $p) | if $m == "cpu" then .cpu_ms_per_step / $th else .step_ms end] | min' \
    "$DIR/$1.all.json"
}
# the memory bandwidth pam bench kv measured (best over the runs), or
# BW_GBPS: that measurement is wall time too, so on a loaded machine it
# counts the other jobs; with METRIC=cpu pass what the machine reads when quiet
BW=${BW_GBPS:-$(cat "$DIR/c1.bw")}
# KV bytes a step attends (f16), mean over the timed steps
kvb() { awk -v s="$1" -v d="$2" -v n="$STEPS" -v t="$KVT" 'BEGIN { printf "%.0f", s * (d + 2 + (n - 1) / 2) * t }'; }
K1=$(kvb 4 2048); K2=$(kvb 4 8192)
read -r R16 DENSE <<<"$(awk -v a="$(ms c1 single)" -v b="$(ms c2 single)" -v k1="$K1" -v k2="$K2" \
  'BEGIN { r = (k2 - k1) / ((b - a) / 1e3); printf "%.6g %.6g", r, a / 1e3 - k1 / r }')"
# dram holds a quarter of the KV in pam and offload (bench kv's default)
read -r RQ RS <<<"$(awk -v p="$(ms c2 pam)" -v o="$(ms c2 offload)" -v k="$K2" -v r="$R16" -v d="$DENSE" \
  'BEGIN { kd = k / 4; kq = k - kd; rq = kq / (p / 1e3 - d - kd / r); rs = kq / (o / 1e3 - d - k / r);
           printf "%.6g %.6g", rq, rs }')"
machine() { # dram-fraction -> config file for this machine
  local frac=$1 kvtot=$2 f="$DIR/machine-$1-$2.json"
  "$PAM" sim --dump-config | jq --argjson bw "$BW" --argjson r16 "$R16" --argjson dense "$DENSE" \
    --argjson rq "$RQ" --argjson rs "$RS" --argjson w "$W" --argjson params "$PARAMS" --argjson kv "$kvtot" --argjson frac "$frac" '
    def dev(name; attach; cap; ext; int; units; gmacs):
      {name: name, attach: attach, count: 1, capacity_gb: cap, ext_gbps: ext, int_gbps: int, pim_units: units,
       pim_gmacs_per_unit: gmacs, read_pj_per_bit: 0, io_pj_per_bit: 0, pim_mac_pj: 0, static_w: 0,
       sources: {all: "calibrated on this machine by bench/sim_validate.sh"}};
    .gpu = {count: 1, tflops: 1000, attn_tflops: (2 * 2 * $r16 / 1e12),
            mac_pj: 0, static_w: 0, reserve_gb: 0, shared_compute: 1,
            sources: {tflops: "the dense layers are bound by the weight stream (dram ext_gbps), not by MACs, at 2-8 sequences",
                      attn_tflops: "calibrated: f16 attention rate x 2 MAC per f16 byte (4 query heads per KV head)"}}
    | .reduction_units = {gops: 1e6, op_pj: 0, static_w: 0, sources: {all: "merges cost microseconds here"}}
    | .links = [{name: "memcpy", count: 1, gbps: 1e6, pj_per_bit: 0, latency_us: 0, sources: {all: "in-memory"}}]
    | .host_link = "memcpy" | .peer_link = "memcpy"
    | .devices = [dev("dram_all"; "gpu"; ($w + 2 * $kv) / 1e9; $w / $dense / 1e9; 0; 0; 0),
                  dev("dram"; "gpu"; ($w + $kv / (if $frac == 0 then 4 else $frac end)) / 1e9; $w / $dense / 1e9; 0; 0; 0),
                  dev("dramq"; "host"; 2 * $kv / 1e9; $rs / 1e9; 2 * $bw; 1; 2 * $rq / 1e9)]
    | .systems = {gpu: ["dram_all"], offload: ["dram", "dramq"], pam: ["dram", "dramq"]}
    | .kv.block_tokens = 16 | .kv.schedule_every = 1 | .kv.migrate_gb_per_step = 0.067 | .kv.max_batch = 256' >"$f"
  echo "$f"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $THREADS threads;" \
     "metric: $METRIC, fastest of $REPEAT run(s) per configuration"
echo "calibrated: memory $BW GB/s; dense $(awk -v d="$DENSE" 'BEGIN{printf "%.1f", d*1e3}') ms/step at 4 sequences" \
     "(weights streamed at $(awk -v d="$DENSE" -v w="$W" 'BEGIN{printf "%.2f", w/d/1e9}') GB/s);" \
     "f16 attention $(awk -v r="$R16" 'BEGIN{printf "%.2f", r/1e9}') GB/s; int8 attention" \
     "$(awk -v r="$RQ" 'BEGIN{printf "%.2f", r/1e9}') GB/s (f16-equivalent); offload staging" \
     "$(awk -v r="$RS" 'BEGIN{printf "%.2f", r/1e9}') GB/s"
echo
echo "| config  | seqs | depth | dram share | policy  | measured ms/step | predicted ms/step | error |"
echo "|---------|------|-------|------------|---------|------------------|-------------------|-------|"
for c in "${CONFIGS[@]}"; do
  read -r name seqs depth frac <<<"$c"
  kvtot=$(( seqs * (depth + 2 + STEPS) * ${KVT%.*} ))
  cfg=$(machine "$frac" "$kvtot")
  pred=$("$PAM" sim --config "$cfg" --model "$MODEL" --trace "$DIR/locality.trace" --systems gpu,offload,pam \
         --batch "$seqs" --context "$depth" \
         --steps "$STEPS" --warmup 2 --json 2>/dev/null)
  for pol in pam offload single; do
    sys=$pol; [ "$pol" = single ] && sys=gpu
    m=$(ms "$name" "$pol")
    p=$(jq -r --arg s "$sys" '.[] | select(.system == $s) | .tpot_ms' <<<"$pred")
    share=$([ "$frac" = 0 ] && echo "1/4" || echo "1/$frac"); [ "$pol" = single ] && share="all"
    kind=$name; { [ "$name" = c2 ] || { [ "$name" = c1 ] && [ "$pol" = single ]; }; } && kind="$name fit"
    awk -v n="$kind" -v s="$seqs" -v d="$depth" -v sh="$share" -v pol="$pol" -v m="$m" -v p="$p" \
      'BEGIN { printf "| %-7s | %4d | %5d | %-10s | %-7s | %16.1f | %17.1f | %+4.0f%% |\n", n, s, d, sh, pol, m, p, 100 * (p - m) / m }'
  done
done
