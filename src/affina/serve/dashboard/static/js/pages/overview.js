// Overview: what is served, what is registered, what was asked lately, what is training.

import { ApiError, ago, badge, get, h, link, num, section, table, when } from "../api.js";
import { jobBadge, jobProgressText } from "./jobs.js";
import { beforeAfter } from "./runs.js";

function stat(label, value, sub) {
  return h("div", { class: "stat" }, h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label),
    sub ? h("div", { class: "stat-sub muted" }, sub) : null);
}

export async function overviewPage(view, ctx) {
  const info = await get("/dashboard/api/overview", { signal: ctx.signal });
  const req = info.requests;
  view.append(h("h1", {}, "Overview"),
    h("div", { class: "stats" },
      stat("base model", info.base, info.base_spec),
      stat("servable runs", num(info.run_count), info.unavailable.length ? `${info.unavailable.length} not servable` : "all servable"),
      stat("registered models", num(info.registry.length), info.registry_error || ""),
      stat("requests, 24 h", req ? num(req.requests) : "—", req ? `${num(req.errors)} errors · median ${num(req.median_latency_ms, 0)} ms` : ""),
      stat("in memory", num(info.loaded_adapters.length + info.loaded_models.length),
        `${info.loaded_adapters.length} adapters, ${info.loaded_models.length} own copies · queue ${info.queue_depth}`)));

  const jobs = section("Fine-tuning jobs", h("p", { class: "muted" }, "loading…"));
  const grid = h("div", { class: "grid2 wide" },
    section("Latest runs", table(["run", "method", "created", "evaluation: base → run"], info.runs.map((r) => h("tr", {},
      h("td", {}, link(`#/runs/${encodeURIComponent(r.name)}`, r.name)), h("td", {}, r.method),
      h("td", {}, ago(r.created)), h("td", { class: "before-after" }, beforeAfter(r.eval_before, r.eval_after)))))),
    section("Registry", table(["model", "versions", "aliases"], info.registry.map((m) => h("tr", {},
      h("td", {}, link("#/registry", m.name)), h("td", {}, num(m.versions)),
      h("td", {}, Object.entries(m.aliases).map(([a, v]) => badge(`${a} → v${v}`, "alias"))))))),
    jobs,
    section("Recent requests", table(["time", "model", "status", "latency"], info.recent_requests.map((r) => h("tr", {},
      h("td", {}, ago(r.created_at)), h("td", {}, r.model || "—"), h("td", {}, statusBadge(r.status)),
      h("td", {}, `${num(r.latency_ms, 0)} ms`)))), h("p", {}, link("#/requests", "all requests →"))));
  view.append(grid);
  if (info.unavailable.length) {
    view.append(section("Runs that are not served", table(["run", "why"], info.unavailable.map((u) =>
      h("tr", {}, h("td", {}, u.name), h("td", {}, u.reason))))));
  }
  try {
    const list = await get("/v1/fine_tuning/jobs?limit=5", { signal: ctx.signal });
    jobs.replaceChildren(h("h2", {}, "Fine-tuning jobs"), table(["job", "status", "progress", "created"], list.data.map((j) => h("tr", {},
      h("td", { class: "mono", title: j.fine_tuned_model || j.model }, link(`#/jobs/${encodeURIComponent(j.id)}`, j.id)),
      h("td", {}, jobBadge(j.status)), h("td", {}, jobProgressText(j)), h("td", {}, ago(j.created_at))))),
    h("p", {}, link("#/jobs", "all jobs →")));
  } catch (e) {
    jobs.replaceChildren(h("h2", {}, "Fine-tuning jobs"), h("p", { class: "muted" },
      e instanceof ApiError && e.status === 404 ? "This server has no jobs API." : e.message));
  }
}

export function statusBadge(status) {
  return badge(String(status), status < 300 ? "ok" : status < 500 ? "warn" : "bad");
}

