#!/usr/bin/env bash
# pam convert end to end: usage: cli_convert.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -euo pipefail
pam=$1
models=$2/models/stories260K
tmp=$3/test-tmp
mkdir -p "$tmp"
out=$tmp/cli.gguf
rm -f "$out" "$out.tmp"

fail() { echo "FAIL: $*" >&2; exit 1; }

# Default (f32) conversion: exit 0, a one-line summary, the file exists.
summary=$("$pam" convert "$models/stories260K.bin" "$models/tok512.bin" -o "$out")
[ -s "$out" ] || fail "no output file"
[ "$(printf '%s\n' "$summary" | wc -l)" -eq 1 ] || fail "summary is not one line: $summary"
grep -q "5 layers" <<<"$summary" || fail "summary lacks the layer count: $summary"
head -c 4 "$out" | grep -q GGUF || fail "output is not GGUF"

# Quantised, with the fallback for 172-wide rows mentioned.
summary=$("$pam" convert "$models/stories260K.bin" "$models/tok512.bin" -o "$tmp/cli-q8.gguf" --type q8_0)
grep -q "Q8_0" <<<"$summary" || fail "q8_0 summary: $summary"
grep -q "F16" <<<"$summary" || fail "q8_0 summary does not mention the F16 fallback: $summary"
[ "$(stat -c %s "$tmp/cli-q8.gguf")" -lt "$(stat -c %s "$out")" ] || fail "q8_0 output not smaller"

# --help succeeds and describes the command.
"$pam" convert --help | grep -q "usage: pam convert" || fail "--help"

# Failures: non-zero exit, a "pam convert:" message, no output left behind.
expect_error() {
    local want=$1
    shift
    local err rc=0
    err=$("$pam" convert "$@" 2>&1 >/dev/null) || rc=$?
    [ "$rc" -ne 0 ] || fail "exit 0 for: $*"
    grep -q "^pam convert: " <<<"$err" || fail "no 'pam convert:' message for: $* ($err)"
    grep -q -- "$want" <<<"$err" || fail "message for $* lacks '$want': $err"
}
rm -f "$tmp/cli-bad.gguf"
expect_error "missing.bin" "$tmp/missing.bin" "$models/tok512.bin" -o "$tmp/cli-bad.gguf"
expect_error "need" "$models/stories260K.bin" "$models/tok512.bin"
expect_error "unknown type" "$models/stories260K.bin" "$models/tok512.bin" -o "$tmp/cli-bad.gguf" --type q3
expect_error "unknown option" "$models/stories260K.bin" "$models/tok512.bin" -o "$tmp/cli-bad.gguf" --bogus
head -c 1000 "$models/tok512.bin" >"$tmp/cli-short-tok.bin"
expect_error "tokenizer" "$models/stories260K.bin" "$tmp/cli-short-tok.bin" -o "$tmp/cli-bad.gguf"
[ ! -e "$tmp/cli-bad.gguf" ] || fail "a failed conversion left an output file"
[ ! -e "$tmp/cli-bad.gguf.tmp" ] || fail "a failed conversion left a temporary file"
echo "cli_convert: ok"
