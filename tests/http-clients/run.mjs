// Drives the official `openai` npm client against a FastServe HTTP front door and prints one JSON object per run
// (tests/FastServe.Tests/Http/OpenAiClientTests.cs reads it).
// Usage: node run.mjs BASE_URL MODEL SCENARIO [PROMPT]
//   completion | completion-stream | chat | chat-stream | chat-stream-usage | error-bad-sampling | error-unknown-model
//   | completion-logprobs | chat-logprobs | chat-stream-logprobs (per-token log-probabilities, 2 alternatives each)
import OpenAI from "openai";

const [baseURL, model, scenario, prompt = "Correct: she go to school yesterday\nFixed:"] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY ?? "none", maxRetries: 0, timeout: 30_000 });
const user = "she go to school yesterday";

async function run() {
  switch (scenario) {
    case "completion": {
      const r = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0 });
      return { text: r.choices[0].text, finish: r.choices[0].finish_reason, usage: r.usage, object: r.object };
    }
    case "completion-stream": {
      const s = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stream: true });
      let text = "", finish = null, chunks = 0;
      for await (const c of s) { chunks++; if (c.choices.length) { text += c.choices[0].text; finish = c.choices[0].finish_reason ?? finish; } }
      return { text, finish, chunks };
    }
    case "chat": {
      const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: user }], max_tokens: 24, temperature: 0 });
      return { text: r.choices[0].message.content, role: r.choices[0].message.role, finish: r.choices[0].finish_reason, usage: r.usage, object: r.object };
    }
    case "chat-stream":
    case "chat-stream-usage": {
      const withUsage = scenario === "chat-stream-usage";
      const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: user }], max_tokens: 24, temperature: 0,
        stream: true, ...(withUsage ? { stream_options: { include_usage: true } } : {}) });
      let text = "", finish = null, role = null, usage = null, chunks = 0;
      for await (const c of s) {
        chunks++;
        if (c.usage) usage = c.usage;
        for (const ch of c.choices) { role = ch.delta.role ?? role; text += ch.delta.content ?? ""; finish = ch.finish_reason ?? finish; }
      }
      return { text, finish, role, usage, chunks };
    }
    case "completion-logprobs": {
      const r = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, logprobs: 2 });
      return { text: r.choices[0].text, logprobs: r.choices[0].logprobs, usage: r.usage };
    }
    case "chat-logprobs": {
      const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: user }], max_tokens: 24, temperature: 0,
        logprobs: true, top_logprobs: 2 });
      return { text: r.choices[0].message.content, content: r.choices[0].logprobs.content, usage: r.usage };
    }
    case "chat-stream-logprobs": {
      const s = await client.chat.completions.create({ model, messages: [{ role: "user", content: user }], max_tokens: 24, temperature: 0,
        logprobs: true, top_logprobs: 2, stream: true });
      let text = "", content = [], chunks = 0;
      for await (const c of s) {
        chunks++;
        for (const ch of c.choices) { text += ch.delta.content ?? ""; if (ch.logprobs?.content) content.push(...ch.logprobs.content); }
      }
      return { text, content, chunks };
    }
    case "error-bad-sampling":
      await client.completions.create({ model, prompt, max_tokens: 4, temperature: -1 });
      return { unexpected: "no error" };
    case "error-unknown-model":
      await client.completions.create({ model: "no-such-model", prompt, max_tokens: 4 });
      return { unexpected: "no error" };
    default:
      throw new Error(`unknown scenario ${scenario}`);
  }
}

try {
  console.log(JSON.stringify({ ok: true, ...(await run()) }));
} catch (e) {
  if (e instanceof OpenAI.APIError) console.log(JSON.stringify({ ok: false, status: e.status, code: e.code ?? null, type: e.type ?? null, message: e.message }));
  else { console.log(JSON.stringify({ ok: false, status: null, message: String(e) })); process.exitCode = 1; }
}
