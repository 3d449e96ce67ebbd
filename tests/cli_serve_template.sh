#!/usr/bin/env bash
# pam serve with Jinja chat templates, over loopback HTTP: --chat-template-file
# with real templates from ../shared/templates, POST /apply-template equal to
# jinja2's rendering in expected.json (BOS left out: the tokenizer adds it),
# a template's raise_exception becoming a 400 with its message, a chat
# completion through the template, chat_template_kwargs, and a template
# that does not parse refused at start.
# usage: cli_serve_template.sh PAM_BINARY SHARED_DIR BUILD_DIR
set -u
pam=$1 shared=$2 build=$3
tmp=$build/test-tmp/cli_serve_template
rm -rf "$tmp"; mkdir -p "$tmp"
. "$(dirname "$0")/serve_lib.sh"
if ! command -v node >/dev/null; then
  echo "FAIL: node is not installed (scripts/setup.sh installs nodejs); this test reads JSON with it"; exit 1
fi

# case_field TEMPLATE CONVERSATION AGP FIELD: a field of an expected.json case, as JSON.
case_field() {
  node -e '
    const d = require(process.argv[1]);
    const c = d.cases.find(c => c.template === process.argv[2] && c.conversation === process.argv[3] &&
                                c.add_generation_prompt === (process.argv[4] === "true"));
    process.stdout.write(JSON.stringify(c[process.argv[5]]));' \
    "$shared/templates/expected.json" "$1" "$2" "$3" "$4"
}
# body_is_prompt EXPECTED_JSON_STRING: the response is {"prompt": expected minus a leading "<s>"}.
body_is_prompt() {
  node -e '
    const fs = require("fs");
    const got = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    let want = JSON.parse(process.argv[2]);
    if (want.startsWith("<s>")) want = want.slice(3);
    if (got.prompt !== want) { console.error("got  " + JSON.stringify(got.prompt) + "\nwant " + JSON.stringify(want)); process.exit(1); }' \
    "$tmp/body" "$1"
}

model=$tmp/stories260K.gguf
"$pam" convert "$shared/models/stories260K/stories260K.bin" "$shared/models/stories260K/tok512.bin" -o "$model" >/dev/null
check "convert" $?

# Gemma 2: BOS in the template, trim filter, raise_exception for a system message.
gemma=google-gemma-2-2b-it.jinja
start_server "$tmp/gemma.log" -m "$model" -np 2 -c 256 -t 2 --chat-template-file "$shared/templates/$gemma" || exit 1
grep -q "chat template jinja (from the given file)" "$tmp/gemma.log"
check "the server says it uses the given Jinja template" $?
for conv in user specials; do
  msgs=$(case_field "$gemma" "$conv" true messages)
  [ "$(req POST /apply-template "{\"messages\":$msgs}")" = 200 ] && body_is_prompt "$(case_field "$gemma" "$conv" true expected)"
  check "POST /apply-template equals jinja2's rendering ($gemma, $conv)" $?
done
msgs=$(case_field "$gemma" system_user true messages)
[ "$(req POST /apply-template "{\"messages\":$msgs}")" = 400 ] &&
  grep -q '"message":"TemplateError: System role not supported"' "$tmp/body" && grep -q '"param":"messages"' "$tmp/body"
check "raise_exception in the template -> 400 with its message (/apply-template)" $?
[ "$(req POST /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":4}")" = 400 ] &&
  grep -q '"message":"TemplateError: System role not supported"' "$tmp/body"
check "raise_exception in the template -> 400 with its message (/v1/chat/completions)" $?
[ "$(req POST /v1/chat/completions '{"messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":6,"temperature":0}')" = 200 ] &&
  grep -q '"role":"assistant"' "$tmp/body" && grep -q '"completion_tokens":6' "$tmp/body"
check "a chat completion through the Jinja template" $?
# The prompt is what /apply-template shows: the same tokens as a completion of that text.
[ "$(req POST /apply-template '{"messages":[{"role":"user","content":"Hi"}]}')" = 200 ]
prompt=$(node -e 'process.stdout.write(JSON.stringify(JSON.parse(require("fs").readFileSync(process.argv[1])).prompt))' "$tmp/body")
[ "$(req POST /v1/chat/completions '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}')" = 200 ] &&
  chat_prompt_tokens=$(grep -o '"prompt_tokens":[0-9]*' "$tmp/body") &&
  [ "$(req POST /v1/completions "{\"prompt\":$prompt,\"max_tokens\":1}")" = 200 ] &&
  [ "$(grep -o '"prompt_tokens":[0-9]*' "$tmp/body")" = "$chat_prompt_tokens" ]
check "a chat request's prompt is the /apply-template text" $?
[ "$(req GET /apply-template)" = 405 ]
check "GET /apply-template -> 405" $?
[ "$(req POST /apply-template '{"messages":"x"}')" = 400 ] && grep -q "'messages' must be an array" "$tmp/body"
check "/apply-template with bad messages -> 400" $?
stop_server
check "server drains and exits 0" $?

# SmolLM3: namespace-free but uses is-defined defaults, string methods and
# a kwarg (enable_thinking) from chat_template_kwargs; Llama 3.1 and Qwen 2.5
# for the remaining conversations.
for t in HuggingFaceTB-SmolLM3-3B.jinja meta-llama-Llama-3.1-8B-Instruct.jinja Qwen-Qwen2.5-7B-Instruct.jinja; do
  start_server "$tmp/t.log" -m "$model" -np 1 -c 256 -t 2 --chat-template-file "$shared/templates/$t" || exit 1
  for conv in system_user multi_turn; do
    msgs=$(case_field "$t" "$conv" true messages)
    [ "$(req POST /apply-template "{\"messages\":$msgs}")" = 200 ] && body_is_prompt "$(case_field "$t" "$conv" true expected)"
    check "POST /apply-template equals jinja2's rendering ($t, $conv)" $?
  done
  if [ "$t" = Qwen-Qwen2.5-7B-Instruct.jinja ]; then
    tools='[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]'
    [ "$(req POST /apply-template "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"tools\":$tools}")" = 200 ] &&
      grep -q '# Tools' "$tmp/body" &&
      grep -qF '<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}}\n</tools>' "$tmp/body"
    check "/apply-template renders the request's tools with the template (tojson as Hugging Face's)" $?
    [ "$(req POST /v1/chat/completions "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"tools\":$tools}")" = 400 ] &&
      grep -q '"param":"tools"' "$tmp/body"
    check "a chat completion with tools is still refused (no tool calling)" $?
  fi
  if [ "$t" = HuggingFaceTB-SmolLM3-3B.jinja ]; then
    [ "$(req POST /apply-template '{"messages":[{"role":"user","content":"Hi"}],"chat_template_kwargs":{"enable_thinking":false}}')" = 200 ] &&
      grep -q 'Reasoning Mode: /no_think' "$tmp/body" && grep -q '<think>\\n\\n</think>' "$tmp/body"
    check "chat_template_kwargs reach the template (enable_thinking: false)" $?
  fi
  stop_server
done

# A template that does not parse is refused at start, with jinja2's message.
printf '{%% for m in messages %%}{{ m.content }}' >"$tmp/broken.jinja"
"$pam" serve --port 0 -m "$model" -t 1 --chat-template-file "$tmp/broken.jinja" 2>"$tmp/broken.log"
rc=$?
[ $rc -ne 0 ] && grep -q "the chat template does not parse: TemplateSyntaxError: Unexpected end of template" "$tmp/broken.log"
check "a template that does not parse is refused at start" $?
"$pam" serve --port 0 -m "$model" -t 1 --chat-template-file "$tmp/missing.jinja" 2>"$tmp/missing.log"
[ $? -ne 0 ] && grep -q "cannot open --chat-template-file" "$tmp/missing.log"
check "a missing template file is refused" $?

printf '{{ messages[0].content.casefold() }}' >"$tmp/fails.jinja"
"$pam" serve --port 0 -m "$model" -t 1 --chat-template-file "$tmp/fails.jinja" 2>"$tmp/fails.log"
[ $? -ne 0 ] && grep -q "the chat template fails on a one-message conversation: UndefinedError: 'str object' has no attribute 'casefold'" "$tmp/fails.log"
check "a template that cannot render a one-message conversation is refused at start" $?

exit $fail
