// The official openai npm client, unchanged, against `pam serve`: a chat
// completion without and with streaming.
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
process.exit(failed);
