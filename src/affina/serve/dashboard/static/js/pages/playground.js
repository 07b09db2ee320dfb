// Playground: one message, two served models side by side, each answer streamed through
// /v1/chat/completions as it is generated. Each side keeps its own conversation.

import { ApiError, errorBox, get, h, num, request } from "../api.js";

// Read an OpenAI chat stream: call onDelta(text) per piece; resolve with the finish reason.
async function streamChat(body, onDelta, signal) {
  const res = await request("/v1/chat/completions", { method: "POST", json: { ...body, stream: true }, signal, raw: true });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return finish;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk);
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return finish;
}

class Side {
  constructor(id, models, chosen) {
    this.messages = [];
    this.select = h("select", { id: `model-${id}`, class: "model-select" }, models.map((m) => h("option", { value: m }, m)));
    if (chosen) {
      if (!models.includes(chosen)) this.select.append(h("option", { value: chosen }, chosen));
      this.select.value = chosen;
    }
    this.select.addEventListener("change", () => this.clear());
    this.log = h("div", { class: "chat-log", id: `log-${id}` });
    this.el = h("div", { class: "chat-side", "data-side": id }, h("label", {}, "Model ", this.select), this.log);
  }
  clear() {
    this.messages = [];
    this.log.replaceChildren();
  }
  async ask(text, settings, signal) {
    this.messages.push({ role: "user", content: text });
    this.log.append(h("div", { class: "msg user" }, text));
    const answer = h("div", { class: "msg assistant streaming" });
    const meta = h("div", { class: "msg-meta muted" }, "waiting…");
    this.log.append(answer, meta);
    const started = performance.now();
    let pieces = 0, first = null;
    try {
      const finish = await streamChat({ model: this.select.value, messages: this.messages, ...settings }, (piece) => {
        if (first === null) first = performance.now();
        pieces += 1;
        answer.textContent += piece;
        meta.textContent = `${pieces} pieces…`;
        this.log.scrollTop = this.log.scrollHeight;
      }, signal);
      const seconds = (performance.now() - started) / 1000;
      meta.textContent = `${this.select.value} · finish ${finish} · first piece after ${num(((first ?? performance.now()) - started) / 1000, 2)} s · ${num(seconds, 2)} s`;
      this.messages.push({ role: "assistant", content: answer.textContent });
      answer.dataset.finish = finish || "";
      if (!answer.textContent.trim()) answer.classList.add("blank");  // shown as a note, kept as sent
    } catch (e) {
      if (e.name === "AbortError") return;
      this.messages.pop();
      meta.replaceChildren(errorBox(e));
    } finally {
      answer.classList.remove("streaming");
    }
  }
}

export async function playgroundPage(view, ctx) {
  const list = await get("/v1/models", { signal: ctx.signal });
  const models = list.data.map((m) => m.id);
  const left = new Side("a", models, ctx.params.get("a") || models[1] || models[0]);
  const right = new Side("b", models, ctx.params.get("b") || models[0]);
  const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: "0" });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, max: 1024, value: "64" });
  const input = h("textarea", { id: "prompt", rows: 3, placeholder: "Ask both models… (Ctrl+Enter sends)" });
  const send = h("button", { id: "send", type: "submit" }, "Send to both");
  const form = h("form", { class: "chat-input", onsubmit: async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send.disabled = true;
    const settings = { temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) };
    try {
      await Promise.all([left.ask(text, settings, ctx.signal), right.ask(text, settings, ctx.signal)]);
    } finally {
      send.disabled = false;
      input.focus();
    }
  } }, input, h("div", { class: "toolbar" },
    h("label", {}, "temperature ", temperature), h("label", {}, "max tokens ", maxTokens), send,
    h("button", { type: "button", onclick: () => { left.clear(); right.clear(); } }, "Clear")));
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  view.append(h("h1", {}, "Playground"),
    h("p", { class: "muted" }, "Each message goes to both models at once; answers stream in as they are generated."),
    h("div", { class: "chat" }, left.el, right.el), form);
  if (list.unavailable && list.unavailable.length) {
    view.append(h("p", { class: "muted" }, `Not servable: ${list.unavailable.map((u) => u.id).join(", ")}`));
  }
}
