// HTTP checks against a running `pam serve` (stories260K), with Node's fetch.
// usage: node serve_client.mjs BASE_URL MODEL_ID
// Every request has a timeout; the process exits non-zero on the first failure.
const [base, model] = process.argv.slice(2);
let failed = 0;
function check(desc, ok, extra) {
  console.log(`${ok ? "ok" : "FAIL"}: ${desc}${ok || extra === undefined ? "" : " -- " + extra}`);
  if (!ok) failed = 1;
}
async function post(path, body, timeoutMs = 60000) {
  const r = await fetch(base + path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return { status: r.status, json: await r.json() };
}
async function metrics() {
  const t = await (await fetch(base + "/metrics", { signal: AbortSignal.timeout(10000) })).text();
  const m = {};
  for (const line of t.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}
async function streamText(path, body) {
  const r = await fetch(base + path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
    signal: AbortSignal.timeout(60000),
  });
  const raw = await r.text();
  let text = "", finish = null, usage = null, done = false, n = 0;
  for (const ev of raw.split("\n\n")) {
    if (!ev.startsWith("data: ")) continue;
    const d = ev.slice(6);
    if (d === "[DONE]") { done = true; continue; }
    const c = JSON.parse(d);
    n++;
    if (c.usage) usage = c.usage;
    const ch = c.choices[0];
    if (!ch) continue;
    text += ch.text ?? ch.delta?.content ?? "";
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { status: r.status, type: r.headers.get("content-type"), text, finish, usage, done, n };
}

const prompts = ["Once upon a time", "The cat", "Lily and Tom", "One day", "The sun was", "A little bird",
                 "Tim had a red ball", "Sara"];
const reqFor = (i) => ({ model, prompt: prompts[i % 8], max_tokens: 20 + (i % 5) * 9, temperature: 0,
                         ignore_eos: i % 3 === 0 });

// 1. Non-streaming completion matches the llama2.c greedy reference.
{
  const r = await post("/v1/completions", { model, prompt: "Once upon a time", max_tokens: 20, temperature: 0 });
  check("completion 200", r.status === 200, JSON.stringify(r.json));
  check("completion text is the reference",
        r.json.choices?.[0]?.text?.startsWith(", there was a little girl named Lily. She loved to play"), r.json.choices?.[0]?.text);
  check("completion object/model/usage", r.json.object === "text_completion" && r.json.model === model &&
        r.json.usage.prompt_tokens === 5 && r.json.usage.completion_tokens === 20 && r.json.usage.total_tokens === 25 &&
        r.json.choices[0].finish_reason === "length" && r.json.id.startsWith("cmpl-"));
}
// 2. Streaming gives the same text as non-streaming, in chunks, then [DONE].
for (const path of ["/v1/completions", "/v1/chat/completions"]) {
  const body = path.includes("chat")
    ? { model, messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Tell a story." }],
        max_tokens: 30, temperature: 0 }
    : { model, prompt: "The cat", max_tokens: 30, temperature: 0 };
  const a = await post(path, body);
  const s = await streamText(path, body);
  const want = path.includes("chat") ? a.json.choices?.[0]?.message?.content : a.json.choices?.[0]?.text;
  check(`${path}: non-streaming 200`, a.status === 200 && typeof want === "string" && want.length > 0, JSON.stringify(a.json));
  if (path.includes("chat"))
    check(`${path}: chat object`, a.json.object === "chat.completion" && a.json.choices[0].message.role === "assistant");
  check(`${path}: stream is text/event-stream`, s.status === 200 && s.type?.startsWith("text/event-stream"), s.type);
  check(`${path}: streamed text equals non-streamed`, s.text === want, JSON.stringify([s.text, want]));
  check(`${path}: stream ends with finish_reason, usage and [DONE]`, s.done && s.finish === a.json.choices?.[0]?.finish_reason &&
        s.usage?.completion_tokens === a.json.usage?.completion_tokens && s.n >= 2);
}
// 3. 32 concurrent clients get what each prompt gets alone.
{
  const alone = [];
  for (let i = 0; i < 32; i++) alone.push(await post("/v1/completions", reqFor(i)));
  const conc = await Promise.all(Array.from({ length: 32 }, (_, i) =>
    i % 4 === 1 ? streamText("/v1/completions", reqFor(i)) : post("/v1/completions", reqFor(i))));
  let same = 0;
  for (let i = 0; i < 32; i++) {
    const t = conc[i].json ? conc[i].json.choices?.[0]?.text : conc[i].text;
    if (alone[i].status === 200 && conc[i].status === 200 && t === alone[i].json.choices[0].text) same++;
    else console.log(`  #${i}: alone ${JSON.stringify(alone[i].json.choices?.[0]?.text)} vs ${JSON.stringify(t)}`);
  }
  check("32 concurrent greedy outputs equal each alone", same === 32, `${same}/32`);
}
// 4. Prefix cache: a repeated long prompt reuses its prefix; output unchanged.
{
  const before = await metrics();
  const long = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends";
  const a = await post("/v1/completions", { model, prompt: long, max_tokens: 16, temperature: 0 });
  const b = await post("/v1/completions", { model, prompt: long, max_tokens: 16, temperature: 0 });
  const after = await metrics();
  check("repeated prompt: same output", a.json.choices?.[0]?.text === b.json.choices?.[0]?.text);
  check("repeated prompt: cached_tokens reported", b.json.usage?.prompt_tokens_details?.cached_tokens >= b.json.usage?.prompt_tokens - 1,
        JSON.stringify(b.json.usage));
  check("prefix-cache hits and reused tokens visible in /metrics",
        after["pam_prefix_cache_hits_total"] > before["pam_prefix_cache_hits_total"] &&
        after["pam_prefix_cache_tokens_reused_total"] - before["pam_prefix_cache_tokens_reused_total"] >= b.json.usage.prompt_tokens - 1 &&
        after["pam_prefix_cache_hit_rate"] > 0);
  check("/metrics has histograms and KV gauges",
        after['pam_time_to_first_token_seconds_bucket{le="+Inf"}'] > 0 && after["pam_time_per_output_token_seconds_count"] > 0 &&
        after['pam_kv_bytes{tier="dram"}'] > 0 && after['pam_kv_blocks{tier="dram"}'] > 0 && "pam_queue_length" in after &&
        'pam_requests_total{finish_reason="length"}' in after && "pam_kv_migrations_total" in after);
}
process.exit(failed);
