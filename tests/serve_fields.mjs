// Log-probabilities, echo, n, penalties, logit_bias and /tokenize against a
// running `pam serve` (stories260K), with Node's fetch.
// usage: node serve_fields.mjs BASE_URL
const [base] = process.argv.slice(2);
let failed = 0;
function check(desc, ok, extra) {
  console.log(`${ok ? "ok" : "FAIL"}: ${desc}${ok || extra === undefined ? "" : " -- " + extra}`);
  if (!ok) failed = 1;
}
async function post(path, body) {
  const r = await fetch(base + path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60000),
  });
  return { status: r.status, json: await r.json() };
}
// The events of a stream, parsed.
async function events(path, body) {
  const r = await fetch(base + path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
    signal: AbortSignal.timeout(60000),
  });
  const out = [];
  for (const ev of (await r.text()).split("\n\n")) {
    if (ev.startsWith("data: {")) out.push(JSON.parse(ev.slice(6)));
  }
  return out;
}
const sortedDesc = (a) => a.every((x, i) => i === 0 || x <= a[i - 1]);
const expSum = (a) => a.reduce((s, x) => s + Math.exp(x), 0);
const greedy = { temperature: 0, ignore_eos: true };
const C = "/v1/completions", CHAT = "/v1/chat/completions";

// ---- /v1/completions logprobs (OpenAI's legacy format) ----
{
  const { status, json } = await post(C, { prompt: "Once upon a time", max_tokens: 10, logprobs: 5, ...greedy });
  const c = json.choices?.[0], lp = c?.logprobs;
  check("completions logprobs: 200 with tokens, token_logprobs, top_logprobs, text_offset",
        status === 200 && lp && lp.tokens.length === 10 && lp.token_logprobs.length === 10 &&
        lp.top_logprobs.length === 10 && lp.text_offset.length === 10, JSON.stringify(json));
  let ok = lp.tokens.join("") === c.text;
  for (let i = 0; ok && i < 10; i++) {
    const vals = Object.values(lp.top_logprobs[i]);
    const best = Object.entries(lp.top_logprobs[i])[0];
    ok = vals.length >= 5 && vals.length <= 6 && sortedDesc(vals) && expSum(vals) <= 1 + 1e-6 &&
         best[0] === lp.tokens[i] && best[1] === lp.token_logprobs[i] && lp.token_logprobs[i] <= 0 &&
         c.text.startsWith(lp.tokens[i], lp.text_offset[i]);
  }
  check("completions logprobs: greedy token is the top-1, top sorted, exp-sum <= 1, offsets point at the tokens", ok,
        JSON.stringify(lp));
}

{
  // A stop string: the tokens of the cut text are left out.
  const { json } = await post(C, { prompt: "Once upon a time", max_tokens: 20, logprobs: 0, stop: " little", ...greedy });
  const c = json.choices[0], lp = c.logprobs;
  check("logprobs with a stop string: entries for the returned text only",
        c.finish_reason === "stop" && c.text === ", there was a" && lp.tokens.join("") === c.text &&
        lp.token_logprobs.length === lp.tokens.length, JSON.stringify(json));
}

// ---- echo: lm-evaluation-harness's log-likelihood requests ----
{
  const { json: tok } = await post("/tokenize", { content: "Once upon a time there was", add_special: true });
  const ids = tok.tokens;
  const a = await post(C, { prompt: "Once upon a time there was", max_tokens: 0, echo: true, logprobs: 1, temperature: 0 });
  const c = a.json.choices?.[0], lp = c?.logprobs;
  check("echo, max_tokens 0: the prompt, its tokens, first logprob null, nothing generated",
        a.status === 200 && c.text === "Once upon a time there was" && lp.tokens.length === ids.length &&
        lp.token_logprobs[0] === null && lp.top_logprobs[0] === null &&
        lp.token_logprobs.slice(1).every((x) => typeof x === "number" && x <= 0) &&
        a.json.usage.completion_tokens === 0 && a.json.usage.prompt_tokens === ids.length &&
        c.finish_reason === "length", JSON.stringify(a.json));
  // What lm-evaluation-harness sends: a batch of one token-id prompt, echo, max_tokens 1, logprobs 1.
  const b = await post(C, { prompt: [ids], max_tokens: 1, echo: true, logprobs: 1, temperature: 0, seed: 1234 });
  const lb = b.json.choices?.[0]?.logprobs;
  const same = lb && lb.token_logprobs.length === ids.length + 1 &&
               ids.every((_, i) => i === 0 ? lb.token_logprobs[0] === null
                                           : Math.abs(lb.token_logprobs[i] - lp.token_logprobs[i]) < 1e-6);
  check("echo with [[ids]] and max_tokens 1: prompt logprobs equal the text prompt's, then the generated token",
        b.status === 200 && same, JSON.stringify(b.json));
  // A batch of prompts (lm-evaluation-harness with batch_size > 1): one choice per prompt, in order.
  const ids2 = (await post("/tokenize", { content: "The cat sat", add_special: true })).json.tokens;
  const b2 = await post(C, { prompt: [ids, ids2], max_tokens: 0, echo: true, logprobs: 1 });
  const one2 = await post(C, { prompt: ids2, max_tokens: 0, echo: true, logprobs: 1 });
  check("a batch of two token-id prompts: a choice each, equal to the prompts sent alone",
        b2.status === 200 && b2.json.choices.length === 2 && b2.json.choices[1].index === 1 &&
        JSON.stringify(b2.json.choices[0].logprobs) === JSON.stringify(lb && { ...lb, tokens: lb.tokens.slice(0, -1),
          token_logprobs: lb.token_logprobs.slice(0, -1), top_logprobs: lb.top_logprobs.slice(0, -1),
          text_offset: lb.text_offset.slice(0, -1) }) &&
        JSON.stringify(b2.json.choices[1].logprobs) === JSON.stringify(one2.json.choices[0].logprobs) &&
        b2.json.usage.prompt_tokens === ids.length + ids2.length, JSON.stringify([b2.json, one2.json]));
  // lm-eval's is_greedy: each continuation token's logprob is the max of its top_logprobs.
  const g = await post(C, { prompt: "Once upon a time", max_tokens: 6, logprobs: 1, ...greedy });
  const full = "Once upon a time" + g.json.choices[0].text;
  const s = await post(C, { prompt: full, max_tokens: 0, echo: true, logprobs: 1 });
  const ls = s.json.choices[0].logprobs, n = ls.tokens.length;
  const cont = ls.token_logprobs.slice(n - 6), contTop = ls.top_logprobs.slice(n - 6);
  check("scoring a greedy continuation: is_greedy holds and the values equal the generation's",
        cont.every((x, i) => x === Math.max(...Object.values(contTop[i])) &&
                             Math.abs(x - g.json.choices[0].logprobs.token_logprobs[i]) < 1e-4),
        JSON.stringify([cont, g.json.choices[0].logprobs.token_logprobs]));
}

// ---- chat logprobs ----
{
  const msg = [{ role: "user", content: "Tell me a story" }];
  const { status, json } = await post(CHAT, { messages: msg, max_tokens: 12, logprobs: true, top_logprobs: 3, ...greedy });
  const c = json.choices?.[0], content = c?.logprobs?.content;
  let ok = status === 200 && Array.isArray(content) && content.length === 12 &&
           content.map((e) => e.token).join("") === c.message.content;
  for (const e of content ?? []) {
    const vals = e.top_logprobs.map((t) => t.logprob);
    ok &&= e.top_logprobs.length === 3 && e.top_logprobs[0].token === e.token && e.top_logprobs[0].logprob === e.logprob &&
           sortedDesc(vals) && expSum(vals) <= 1 + 1e-6 && Buffer.from(e.bytes).toString() === e.token;
  }
  check("chat logprobs: content[] with token, logprob, bytes, top_logprobs; top-1 is the greedy token", ok,
        JSON.stringify(json));
  const evs = await events(CHAT, { messages: msg, max_tokens: 12, logprobs: true, top_logprobs: 3, ...greedy });
  const streamed = evs.flatMap((e) => e.choices?.[0]?.logprobs?.content ?? []);
  check("chat logprobs streamed: the same entries as without streaming",
        JSON.stringify(streamed) === JSON.stringify(content), JSON.stringify(streamed));
  const none = await post(CHAT, { messages: msg, max_tokens: 3 });
  check("chat without logprobs: logprobs null", none.json.choices[0].logprobs === null);
}

// ---- n ----
{
  const one = await post(C, { prompt: "The cat", max_tokens: 12, ...greedy });
  const { status, json } = await post(C, { prompt: "The cat", max_tokens: 12, n: 4, ...greedy });
  check("n=4 greedy: four identical choices with indices 0..3, usage counts each",
        status === 200 && json.choices.length === 4 && json.choices.every((c, i) => c.index === i &&
        c.text === one.json.choices[0].text) && json.usage.completion_tokens === 48 &&
        json.usage.prompt_tokens === one.json.usage.prompt_tokens &&
        json.usage.total_tokens === json.usage.prompt_tokens + 48, JSON.stringify(json));
  const samp = { prompt: "The cat", max_tokens: 24, temperature: 1.2, top_k: 0, top_p: 1, min_p: 0, ignore_eos: true };
  const s = await post(C, { ...samp, n: 4, seed: 7 });
  const texts = s.json.choices.map((c) => c.text);
  check("n=4 sampling: the choices differ", new Set(texts).size >= 3, JSON.stringify(texts));
  const s0 = await post(C, { ...samp, seed: 7 }), s2 = await post(C, { ...samp, seed: 9 });
  check("n=4 sampling: choice i samples with seed + i",
        texts[0] === s0.json.choices[0].text && texts[2] === s2.json.choices[0].text,
        JSON.stringify([texts, s0.json.choices[0].text, s2.json.choices[0].text]));
  const evs = await events(C, { ...samp, n: 4, seed: 7 });
  const got = ["", "", "", ""], fin = [null, null, null, null];
  let usage = null;
  for (const e of evs) {
    for (const c of e.choices) {
      got[c.index] += c.text;
      if (c.finish_reason) fin[c.index] = c.finish_reason;
    }
    if (e.usage) usage = e.usage;
  }
  check("n=4 streamed: text per index equals the non-streamed choices, each finishes, usage sums",
        JSON.stringify(got) === JSON.stringify(texts) && fin.every((f) => f === "length") &&
        usage?.completion_tokens === 96, JSON.stringify([got, fin, usage]));
  const chat = await post(CHAT, { messages: [{ role: "user", content: "Hi" }], max_tokens: 6, n: 3, ...greedy });
  check("chat n=3 greedy: identical messages", chat.status === 200 && chat.json.choices.length === 3 &&
        chat.json.choices.every((c, i) => c.index === i && c.message.content === chat.json.choices[0].message.content),
        JSON.stringify(chat.json));
}

// ---- penalties and logit_bias, checked against their definitions ----
{
  const body = { prompt: "Once upon a time", max_tokens: 40, logprobs: 0, ...greedy };
  const base0 = (await post(C, body)).json.choices[0].logprobs.tokens;
  const firstDiff = (a, b) => a.findIndex((t, i) => t !== b[i]);
  for (const [name, extra] of [["presence_penalty", { presence_penalty: 1.5 }],
                               ["frequency_penalty", { frequency_penalty: 1.0 }]]) {
    const got = (await post(C, { ...body, ...extra })).json.choices[0].logprobs.tokens;
    const d = firstDiff(base0, got);
    // Only generated tokens are penalised: the output changes first where the
    // greedy choice had already been generated.
    check(`${name}: changes the output, first where the greedy token repeats a generated one`,
          d > 0 && base0.slice(0, d).includes(base0[d]), JSON.stringify([d, base0, got]));
  }
  const noPen = await post(C, { ...body, max_tokens: 1, logprobs: 5, presence_penalty: 2, frequency_penalty: 2 });
  const plain = await post(C, { ...body, max_tokens: 1, logprobs: 5 });
  check("presence/frequency penalties leave the first token's distribution alone (no generated tokens yet)",
        JSON.stringify(noPen.json.choices[0].logprobs) === JSON.stringify(plain.json.choices[0].logprobs));
  const rep = (await post(C, { ...body, repetition_penalty: 1.6 })).json.choices[0].logprobs.tokens;
  const { json: pt } = await post("/tokenize", { content: "Once upon a time", with_pieces: true });
  const window = pt.tokens.map((t) => t.piece);
  const dr = firstDiff(base0, rep);
  check("repetition_penalty: changes the output first where the greedy token is in the window (prompt included)",
        dr >= 0 && window.concat(base0.slice(0, dr)).includes(base0[dr]), JSON.stringify([dr, base0, rep]));

  const first = await post(C, { ...body, max_tokens: 1, logprobs: 1 });
  const firstTok = first.json.choices[0].logprobs.tokens[0];
  const ids = (await post("/tokenize", { content: "Once upon a time" + firstTok })).json.tokens;
  const banId = ids[ids.length - 1];
  const banned = await post(C, { ...body, logit_bias: { [banId]: -100 } });
  const bt = banned.json.choices[0].logprobs.tokens;
  check("logit_bias -100 bans the token: never generated",
        banned.status === 200 && bt[0] !== firstTok && !bt.includes(firstTok),
        JSON.stringify([banId, firstTok, bt]));
  const forced = await post(C, { ...body, max_tokens: 5, logit_bias: { [banId]: 100 } });
  check("logit_bias +100 forces the token", forced.json.choices[0].logprobs.tokens.every((t) => t === firstTok),
        JSON.stringify(forced.json));
}

// ---- /tokenize and /detokenize (llama-server's format) ----
{
  const t = await post("/tokenize", { content: "Once upon a time" });
  const ts = await post("/tokenize", { content: "Once upon a time", add_special: true, with_pieces: true });
  check("/tokenize: ids; add_special adds BOS; with_pieces gives id and piece",
        t.status === 200 && t.json.tokens.every(Number.isInteger) && ts.json.tokens.length === t.json.tokens.length + 1 &&
        ts.json.tokens.slice(1).every((p, i) => p.id === t.json.tokens[i] && typeof p.piece === "string") &&
        ts.json.tokens.slice(1).map((p) => p.piece).join("") === " Once upon a time", JSON.stringify([t.json, ts.json]));
  const d = await post("/detokenize", { tokens: t.json.tokens });
  check("/detokenize: the text of the tokens", d.status === 200 && d.json.content === " Once upon a time",
        JSON.stringify(d.json));
  const e1 = await post("/detokenize", { tokens: [1, 999999] });
  const e2 = await post("/tokenize", { text: "x" });
  const e3 = await post("/tokenize", { content: "x", with_pieces: "yes" });
  check("/tokenize, /detokenize: bad input -> 400 naming the field",
        e1.status === 400 && e1.json.error.param === "tokens" && e2.status === 400 && e2.json.error.param === "content" &&
        e3.status === 400 && e3.json.error.param === "with_pieces", JSON.stringify([e1.json, e2.json, e3.json]));
}
process.exit(failed);
