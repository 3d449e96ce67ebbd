#!/usr/bin/env bash
# Sets up, builds PAM and runs a real generation.
#   bash scripts/run.sh                      stories260K from ../shared/models, converted to GGUF
#   bash scripts/run.sh MODEL.gguf [PROMPT]  any supported GGUF file
# Extra flags for `pam run` can follow the prompt (e.g. --temp 0 -n 64).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target pam >/dev/null

model=${1:-}
prompt=${2:-Once upon a time}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] && shift
if [ -z "$model" ]; then
  shared=${PAM_SHARED_DIR:-$root/../shared}
  ckpt=$shared/models/stories260K/stories260K.bin
  tok=$shared/models/stories260K/tok512.bin
  if [ ! -f "$ckpt" ] || [ ! -f "$tok" ]; then
    echo "run: the default model is not here ($ckpt)." >&2
    echo "run: pass a GGUF file instead:  bash scripts/run.sh path/to/model.gguf \"Your prompt\"" >&2
    echo "run: (or set PAM_SHARED_DIR to the folder holding models/stories260K)" >&2
    exit 2
  fi
  model=build/stories260K.gguf
  if [ ! -f "$model" ] || [ "$ckpt" -nt "$model" ]; then
    ./build/pam convert "$ckpt" "$tok" -o "$model"
  fi
fi
exec ./build/pam run -m "$model" -p "$prompt" -n 256 "$@"
