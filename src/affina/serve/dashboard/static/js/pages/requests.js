// The request log with filters: model, status, time range, text. The filters live in the URL,
// so a filtered view can be linked to.

import { get, h, num, query, section, table, when } from "../api.js";
import { statusBadge } from "./overview.js";

const FIELDS = ["model", "status", "since", "until", "q", "limit"];

// <input type=datetime-local> holds local time without a zone; the API wants UTC.
function toUtc(local) {
  if (!local) return "";
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? local : d.toISOString();
}

function toLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function promptText(prompt) {
  if (typeof prompt === "string") return prompt;
  if (Array.isArray(prompt)) return prompt.map((m) => `${m.role}: ${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`).join("\n");
  return prompt == null ? "" : JSON.stringify(prompt);
}

export async function requestsPage(view, ctx) {
  const p = Object.fromEntries(FIELDS.map((f) => [f, ctx.params.get(f) || ""]));
  const model = h("select", { id: "f-model", name: "model" }, h("option", { value: "" }, "any model"));
  const status = h("select", { id: "f-status", name: "status" },
    ["", "2xx", "4xx", "5xx", "200", "400", "401", "403", "404", "429", "499", "500", "503"].map((v) =>
      h("option", { value: v }, v || "any status")));
  status.value = p.status;
  const since = h("input", { id: "f-since", type: "datetime-local", value: toLocal(p.since) });
  const until = h("input", { id: "f-until", type: "datetime-local", value: toLocal(p.until) });
  const text = h("input", { id: "f-text", type: "search", value: p.q, placeholder: "text in prompt or answer" });
  const limit = h("input", { id: "f-limit", type: "number", min: 1, max: 1000, value: p.limit || "100", size: 5 });
  const form = h("form", { class: "toolbar filters", onsubmit: (e) => {
    e.preventDefault();
    location.hash = `#/requests${query({ model: model.value, status: status.value, since: toUtc(since.value),
      until: toUtc(until.value), q: text.value.trim(), limit: limit.value })}`;
  } }, model, status, h("label", {}, "from ", since), h("label", {}, "to ", until), text,
  h("label", {}, "at most ", limit), h("button", { type: "submit", id: "f-apply" }, "Filter"),
  h("a", { href: "#/requests", class: "button-link" }, "Clear"));
  view.append(h("h1", {}, "Requests"), form);

  const result = await get(`/dashboard/api/requests${query({ ...p, limit: p.limit || 100 })}`, { signal: ctx.signal });
  model.append(...result.models.map((m) => h("option", { value: m }, m)));
  if (p.model && !result.models.includes(p.model)) model.append(h("option", { value: p.model }, p.model));
  model.value = p.model;

  const rows = result.data.map((r) => {
    const detail = h("tr", { class: "detail", hidden: true }, h("td", { colspan: 8 },
      h("div", { class: "grid2" },
        h("div", {}, h("h3", {}, "prompt"), h("pre", { class: "text" }, promptText(r.prompt) || "(not kept: redacted log)")),
        h("div", {}, h("h3", {}, "answer"), h("pre", { class: "text" }, r.response ?? (r.error_code || "—")))),
      h("p", { class: "muted mono" }, `${r.request_id} · key ${r.key_id || "—"} · params ${JSON.stringify(r.params || {})} · adapter ${r.adapter_version || "—"}`)));
    const row = h("tr", { class: "request", "data-model": r.model || "", "data-status": r.status, onclick: () => { detail.hidden = !detail.hidden; } },
      h("td", { class: "nowrap" }, when(r.created_at)), h("td", {}, r.model || "—"), h("td", {}, statusBadge(r.status), r.error_code ? ` ${r.error_code}` : ""),
      h("td", {}, r.endpoint + (r.stream ? " (stream)" : "")), h("td", {}, `${num(r.prompt_tokens ?? 0)} / ${num(r.completion_tokens ?? 0)}`),
      h("td", {}, `${num(r.latency_ms, 0)} ms`), h("td", { class: "snippet" }, promptText(r.prompt).slice(0, 80)),
      h("td", { class: "snippet" }, (r.response || "").slice(0, 80)));
    return [row, detail];
  });
  view.append(section(`${result.data.length} requests${result.truncated ? ` (text search stopped after ${num(result.scanned)} rows)` : ""}`,
    table(["time", "model", "status", "endpoint", "tokens in / out", "latency", "prompt", "answer"], rows, { class: "requests-table" })));
}
