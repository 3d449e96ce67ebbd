// The official openai npm client, unchanged, against `pam serve`: a chat
// completion without and with streaming; log-probabilities, n and penalties
// as the client sends them; legacy completions with echo and logprobs.
// usage: node serve_openai.mjs NODE_MODULES_PREFIX BASE_URL MODEL_ID
import { createRequire } from "node:module";
import { resolve } from "node:path";
const [prefix, base, model] = process.argv.slice(2);
const require = createRequire(resolve(prefix, "package.json"));
const OpenAI = require("openai").default ?? require("openai");
const client = new OpenAI({ apiKey: "unused", baseURL: base + "/v1", timeout: 60000, maxRetries: 0 });
let failed = 0;
const check = (d, ok, x) => { console.log(`${ok ? "ok" : "FAIL"}: ${d}${ok ? "" : " -- " + x}`); if (!ok) failed = 1; };

const messages = [{ role: "system", content: "You tell stories." }, { role: "user", content: "Once upon a time" }];
const r = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0 });
const text = r.choices[0].message.content;
check("openai: chat completion", r.object === "chat.completion" && typeof text === "string" && text.length > 0 &&
      r.choices[0].message.role === "assistant" && ["stop", "length"].includes(r.choices[0].finish_reason) &&
      r.usage.completion_tokens > 0, JSON.stringify(r));

const stream = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0, stream: true,
                                                      stream_options: { include_usage: true } });
let st = "", finish = null, usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  const c = chunk.choices[0];
  if (!c) continue;
  st += c.delta?.content ?? "";
  if (c.finish_reason) finish = c.finish_reason;
}
check("openai: streamed chat equals non-streamed", st === text, JSON.stringify([st, text]));
check("openai: stream finish_reason and usage", finish === r.choices[0].finish_reason &&
      usage?.completion_tokens === r.usage.completion_tokens, JSON.stringify([finish, usage]));

try {
  await client.chat.completions.create({ model: "no-such-model", messages, max_tokens: 4 });
  check("openai: unknown model rejected", false, "no error");
} catch (e) {
  check("openai: unknown model -> 404 NotFoundError", e.status === 404 && /does not exist/.test(e.message), e.message);
}

// Chat log-probabilities and n, as the client sends them.
const lp = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, n: 2, logprobs: true,
                                                  top_logprobs: 2, ignore_eos: true });
const c0 = lp.choices[0].logprobs?.content;
check("openai: chat n=2 with logprobs", lp.choices.length === 2 && lp.choices[1].index === 1 &&
      lp.choices[1].message.content === lp.choices[0].message.content && Array.isArray(c0) && c0.length === 8 &&
      c0.every((e) => e.top_logprobs.length === 2 && e.top_logprobs[0].token === e.token &&
                      e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob) &&
      lp.usage.completion_tokens === 16, JSON.stringify(lp));
const lps = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, n: 2, logprobs: true,
                                                   top_logprobs: 2, ignore_eos: true, stream: true });
const sc = [[], []], stext = ["", ""];
for await (const chunk of lps) {
  for (const c of chunk.choices) {
    stext[c.index] += c.delta?.content ?? "";
    sc[c.index].push(...(c.logprobs?.content ?? []));
  }
}
check("openai: streamed chat n=2 with logprobs equals the non-streamed",
      stext[1] === lp.choices[1].message.content && JSON.stringify(sc[0]) === JSON.stringify(c0),
      JSON.stringify([stext, sc[0].length]));
const pen = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0,
                                                   frequency_penalty: 1.5, presence_penalty: 0.5,
                                                   logit_bias: { "13": -100 } });
check("openai: penalties and logit_bias change the greedy reply", pen.choices[0].message.content.length > 0 &&
      pen.choices[0].message.content !== text, JSON.stringify([pen.choices[0].message.content, text]));

// Legacy completions: what evaluation harnesses send for log-likelihoods.
const echo = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 0, echo: true, logprobs: 1,
                                               temperature: 0 });
const el = echo.choices[0].logprobs;
check("openai: completions echo + logprobs, first token's logprob null", echo.choices[0].text === "Once upon a time" &&
      el.token_logprobs[0] === null && el.top_logprobs[0] === null && el.token_logprobs.length === el.tokens.length &&
      el.text_offset.length === el.tokens.length && echo.usage.completion_tokens === 0, JSON.stringify(echo));
try {
  await client.completions.create({ model, prompt: "x", logprobs: 21 });
  check("openai: logprobs > 20 rejected", false, "no error");
} catch (e) {
  check("openai: logprobs > 20 -> 400 BadRequestError", e.status === 400 && /logprobs/.test(e.message), e.message);
}
process.exit(failed);
