#!/usr/bin/env bash
# `pam run --kv-persist DIR`: a second run of the same prompt takes the
# prompt's full blocks from the journal the first run appended (the count on
# stderr) with the same greedy text as a run without persistence, at any
# thread count; a damaged record is skipped, the block computed and appended
# again, and the clean exit compacts the bad record away; a run of another
# model ignores the journal and says so; bad flags get clear errors.
# usage: cli_run_persist.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
pam=$1 shared=$2 build=$3
tmp=$build/test-tmp/cli_run_persist
rm -rf "$tmp"; mkdir -p "$tmp"
fail=0
check() { if [ "$2" -eq 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
# reused tokens of the last run's stderr ($tmp/NAME.err)
reused() { sed -n 's/^kv persist: \([0-9]*\) of \([0-9]*\) prompt tokens.*/\1/p' "$tmp/$1.err"; }
n_prompt() { sed -n 's/^kv persist: \([0-9]*\) of \([0-9]*\) prompt tokens.*/\2/p' "$tmp/$1.err"; }
run() { # NAME MODEL THREADS ARGS...
  local name=$1 m=$2 t=$3; shift 3
  "$pam" run -m "$m" -p "$prompt" -n 24 --temp 0 -t "$t" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
}

prompt="Once upon a time there was a little girl named Lily. She liked to play in the park with her friends every day, and one day she found a big red ball under the tree"
model=$tmp/stories260K.gguf
"$pam" convert "$shared/models/stories260K/stories260K.bin" "$shared/models/stories260K/tok512.bin" -o "$model" >/dev/null
check "convert" $?
dir=$tmp/journal

run ref "$model" 1
check "reference run" $?
run p1 "$model" 1 --kv-persist "$dir"
check "first run with --kv-persist" $?
cmp -s "$tmp/ref.out" "$tmp/p1.out"
check "first run: same text as without persistence" $?
[ "$(reused p1)" = 0 ]
check "first run: nothing from the journal ($(reused p1))" $?
n=$(n_prompt p1)
full=$(( (n - 1) / 16 * 16 ))
[ "$full" -gt 0 ]
check "the prompt ($n tokens) has full blocks ($full tokens)" $?
ls "$dir"/pam-kv-*-plain.log >/dev/null 2>&1 && [ -s "$(ls "$dir"/pam-kv-*-plain.log)" ]
check "the journal holds records" $?

run p2 "$model" 1 --kv-persist "$dir"
check "second run" $?
cmp -s "$tmp/ref.out" "$tmp/p2.out"
check "second run: same text as without persistence" $?
[ "$(reused p2)" = "$full" ]
check "second run: $full prompt tokens from the journal (got $(reused p2))" $?
grep -q "prompt: $((n - full)) tokens in" "$tmp/p2.err"
check "second run: prefilled only the $((n - full)) other tokens" $?
run p3 "$model" 2 --kv-persist "$dir"
cmp -s "$tmp/ref.out" "$tmp/p3.out" && [ "$(reused p3)" = "$full" ]
check "two threads: same text, same reuse" $?

# another prompt: nothing of it in the journal
prompt_saved=$prompt
prompt="A cat sat on a mat and looked at the moon for a long time, then it went to sleep in the warm house"
run q1 "$model" 1 --kv-persist "$dir"
check "another prompt runs" $?
[ "$(reused q1)" = 0 ]
check "another prompt: nothing from the journal" $?
prompt=$prompt_saved

# a damaged record: skipped, computed again, compacted away at exit
j=$(ls "$dir"/pam-kv-*-plain.log)
size=$(stat -c %s "$j")
printf '\x5a' | dd of="$j" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
run c1 "$model" 1 --kv-persist "$dir"
check "run over a damaged journal" $?
cmp -s "$tmp/ref.out" "$tmp/c1.out"
check "damaged journal: same text" $?
grep -q "skipped 1 unusable records" "$tmp/c1.err"
check "damaged journal: the record is skipped and said so" $?
grep -q "compacted .*1 rejected records" "$tmp/c1.err"
check "damaged journal: compacted at exit" $?
run c2 "$model" 1 --kv-persist "$dir"
cmp -s "$tmp/ref.out" "$tmp/c2.out" && [ "$(reused c2)" = "$full" ]
check "after compaction: same text, $full tokens from the journal (got $(reused c2))" $?
! grep -q "compacted\|skipped [1-9]" "$tmp/c2.err"
check "after compaction: nothing left to skip or compact" $?
ls "$dir"/*.tmp >/dev/null 2>&1
[ $? -ne 0 ]
check "no temporary file left" $?

# another model (one weight changed): its own journal, ours ignored and said so
other_bin=$tmp/other.bin
cp "$shared/models/stories260K/stories260K.bin" "$other_bin"
chmod u+w "$other_bin"
printf '\x01' | dd of="$other_bin" bs=1 seek=400028 conv=notrunc 2>/dev/null
other=$tmp/other.gguf
"$pam" convert "$other_bin" "$shared/models/stories260K/tok512.bin" -o "$other" >/dev/null
check "convert another model" $?
run oref "$other" 1
run o1 "$other" 1 --kv-persist "$dir"
check "another model runs" $?
grep -q "holds 1 journal(s) of another model or key setting; not used" "$tmp/o1.err"
check "another model: says it ignores the journal" $?
[ "$(reused o1)" = 0 ] && cmp -s "$tmp/oref.out" "$tmp/o1.out"
check "another model: nothing reused, its own text" $?
[ "$(ls "$dir"/pam-kv-*-plain.log | wc -l)" = 2 ]
check "another model: its own journal" $?
run p4 "$model" 1 --kv-persist "$dir"
cmp -s "$tmp/ref.out" "$tmp/p4.out" && [ "$(reused p4)" = "$full" ]
check "the first model still finds its blocks" $?

# a size cap: appends stop at it, the clean exit keeps the most recently
# used prefixes within 3/4 of it, so the next run has room for a new prompt
appended() { sed -n 's/^kv persist: .*, \([0-9]*\) blocks appended$/\1/p' "$tmp/$1.err"; }
cap=40000 # 3 blocks of this model (5 layers of 2192-byte records each); 2 kept
run m1 "$model" 1 --kv-persist "$tmp/capped" --kv-persist-max $cap
cmp -s "$tmp/ref.out" "$tmp/m1.out" && [ "$(appended m1)" = 3 ]
check "capped journal: same text, 3 blocks appended (got $(appended m1))" $?
cj=$(ls "$tmp"/capped/pam-kv-*.log)
[ "$(stat -c %s "$cj")" -le $((cap * 3 / 4)) ] && grep -q "compacted .*least recently used" "$tmp/m1.err"
check "capped journal: compacted to 3/4 of the cap at exit" $?
prompt_saved=$prompt
prompt="A cat sat on a mat and looked at the moon for a long time, then it went to sleep in the warm house"
run m2 "$model" 1 --kv-persist "$tmp/capped" --kv-persist-max $cap
[ "$(appended m2)" -gt 0 ]
check "capped journal: a new prompt is still appended ($(appended m2) blocks)" $?
run m3 "$model" 1 --kv-persist "$tmp/capped" --kv-persist-max $cap
[ "$(reused m3)" -gt 0 ]
check "capped journal: the new prompt is found after a restart ($(reused m3) tokens)" $?
[ "$(stat -c %s "$cj")" -le $cap ]
check "capped journal: never over the cap" $?
prompt=$prompt_saved

# bad input
echo x >"$tmp/file"
"$pam" run -m "$model" -p "$prompt" -n 4 --kv-persist "$tmp/file/sub" >/dev/null 2>"$tmp/bad1.err"
[ $? -ne 0 ] && grep -q "persisted KV: cannot create" "$tmp/bad1.err"
check "a directory that cannot be made: clear error" $?
"$pam" run -m "$model" -p "$prompt" -n 4 --kv-persist "$dir" --kv-sparse 50% >/dev/null 2>"$tmp/bad2.err"
[ $? -ne 0 ] && grep -q "cannot go with --kv-persist" "$tmp/bad2.err"
check "--kv-sparse 50% with --kv-persist: refused" $?
"$pam" run -m "$model" -p "$prompt" -n 4 --kv-tier remote:redis://127.0.0.1:1 >/dev/null 2>"$tmp/bad3.err"
[ $? -ne 0 ] && grep -q "is for pam serve" "$tmp/bad3.err"
check "--kv-tier remote: on pam run: refused" $?

exit $fail
