// Runs in the model store: the list, and one run's manifest, config, before/after tables and
// learning curve.

import { badge, get, h, link, num, pretty, section, table, when } from "../api.js";
import { lineChart } from "../charts.js";

const LOWER_IS_BETTER = new Set(["loss", "perplexity"]);

// "loss 6.85 → 6.12" and the first other measure, each coloured by whether the run is better.
export function beforeAfter(before, after) {
  if (!after) return "—";
  const names = Object.keys(after);
  const shown = [names.includes("loss") ? "loss" : null, names.find((k) => !LOWER_IS_BETTER.has(k))].filter(Boolean);
  return shown.map((k) => {
    const b = before ? before[k] : undefined, a = after[k];
    const better = b === undefined || a === b ? "" : (LOWER_IS_BETTER.has(k) ? a < b : a > b) ? "better" : "worse";
    return h("div", { class: better }, `${k} `, b === undefined ? "" : `${num(b, 3)} → `, num(a, 3));
  });
}

export async function runsPage(view, ctx) {
  if (ctx.rest.length) return runPage(view, ctx, ctx.rest[0]);
  const { data, unavailable } = await get("/dashboard/api/runs", { signal: ctx.signal });
  view.append(h("h1", {}, "Runs"),
    h("p", { class: "muted" }, "Run directories in this server's model store and the results of fine-tuning jobs, newest first. Each is served under its name."),
    section(`${data.length} runs`, table(
      ["run", "created", "method", "trainable", "steps", "train loss", "val loss", "evaluation: base → run", "served"],
      data.map((r) => h("tr", { "data-run": r.name },
        h("td", {}, link(`#/runs/${encodeURIComponent(r.name)}`, r.name)), h("td", {}, when(r.created)),
        h("td", {}, r.method), h("td", {}, `${num(r.trainable_percent, 3)} %`), h("td", {}, num(r.steps)),
        h("td", {}, num(r.train_loss)), h("td", {}, num(r.validation_loss)),
        h("td", { class: "before-after" }, beforeAfter(r.eval_before, r.eval_after)),
        h("td", {}, r.servable ? badge("yes", "ok") : h("span", { title: r.unavailable_reason }, badge("no", "bad"))))),
      { class: "runs-table" })));
  if (unavailable.length) {
    view.append(section("Unreadable runs", table(["run", "why"], unavailable.map((u) =>
      h("tr", {}, h("td", {}, u.name), h("td", {}, u.reason))))));
  }
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) =>
    [h("dt", {}, k), h("dd", {}, v === null || v === "" ? "—" : v)]));
}

function evaluationTable(rows) {
  return table(["measure", "before (base)", "after (run)", "change"], rows.map((r) => h("tr", { "data-measure": r.measure },
    h("td", {}, r.measure), h("td", {}, num(r.before)), h("td", {}, num(r.after)),
    h("td", { class: r.better === null ? "" : r.better ? "better" : "worse" },
      r.delta === null ? "—" : `${r.delta > 0 ? "+" : ""}${num(r.delta)}`))), { class: "eval-table" });
}

async function runPage(view, ctx, name) {
  const run = await get(`/dashboard/api/runs/${encodeURIComponent(name)}`, { signal: ctx.signal });
  const rec = run.record;
  const m = rec.method;
  view.append(h("div", {},
    h("p", {}, link("#/runs", "← runs")),
    h("h1", {}, run.name, " ", run.servable ? badge("served", "ok") : badge("not served", "bad")),
    run.servable ? null : h("p", { class: "error" }, run.unavailable_reason),
    h("div", { class: "actions" },
      link(`#/playground?a=${encodeURIComponent(run.name)}&b=base`, "Chat with it in the playground"),
      link(`#/lineage?ref=${encodeURIComponent(run.name)}`, "Lineage"),
      link(`#/requests?model=${encodeURIComponent(run.name)}`, "Its requests"))));

  const curve = run.learning_curve;
  const markers = [];
  if (run.best_step) markers.push({ x: run.best_step, label: "best", color: "#2a9d63" });
  if (run.stop_step) markers.push({ x: run.stop_step, label: "stopped", color: "#c0392b" });
  view.append(h("div", { class: "grid2" },
    section("Before / after", run.evaluation.length ? evaluationTable(run.evaluation)
      : h("p", { class: "muted" }, "This run was not evaluated (no eval.data).")),
    section("Learning curve", lineChart({ series: [
      { name: "train loss", points: curve.train },
      { name: "validation loss", points: curve.validation, dashed: true }], markers }))));

  view.append(section("Manifest (affina.json)", h("div", { class: "grid2" },
    facts([["method", m.name], ["kind", rec.kind], ["artifact", `${rec.artifact}/`],
      ["trainable", `${num(m.trainable_params)} of ${num(m.total_params)} (${num(m.trainable_percent, 3)} %)`],
      ["base model", rec.base_model.spec], ["base fingerprint", rec.base_model.fingerprint],
      ["created", when(rec.created)], ["seed", String(rec.seed)], ["device", rec.device],
      ["git commit", rec.git_commit]]),
    facts([["steps", num(rec.train.global_step)], ["epochs", num(rec.train.epochs)],
      ["train loss", num(rec.train.train_loss)], ["validation loss", num(rec.metrics.validation_loss)],
      ["best step", rec.train.best_step === null ? "—" : String(rec.train.best_step)],
      ["seconds", num(rec.train.seconds, 1)],
      ["train data", `${num(rec.data.train.rows)} rows · ${rec.data.train.fingerprint || "—"}`],
      ["validation data", `${num(rec.data.validation.rows)} rows`],
      ["template", rec.template ? `${rec.data.chat_template} · stops ${(rec.template.stop_tokens || []).join(" ")}` : rec.data.chat_template],
      ["libraries", Object.entries(rec.versions || {}).map(([k, v]) => `${k} ${v}`).join(", ")]])),
  h("details", {}, h("summary", {}, "the whole record"), pretty(rec))));

  view.append(section("Resolved config (config.yaml)", run.config ? pretty(run.config)
    : h("p", { class: "muted" }, run.config_error || "no config.yaml in this run")));

  if (run.predictions.length) {
    view.append(section("Evaluation examples", table(["prompt", "reference", "before", "after"],
      run.predictions.map((p) => h("tr", {}, h("td", { class: "text" }, p.prompt ?? ""),
        h("td", { class: "text" }, p.reference ?? ""), h("td", { class: "text" }, p.before ?? "—"),
        h("td", { class: "text" }, p.after ?? "—"))))));
  }
}
