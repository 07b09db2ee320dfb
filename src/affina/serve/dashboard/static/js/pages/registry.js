// The registry: each model's versions, aliases, and the history of alias moves and promotion
// decisions (with the gates' verdicts).

import { badge, get, h, link, num, section, table, when } from "../api.js";

function decisionBadge(decision) {
  return badge(decision, { promoted: "ok", forced: "warn", refused: "bad" }[decision] || "");
}

function gates(details) {
  if (!details || !details.gates) return null;
  return h("ul", { class: "gates" }, details.gates.map((g) =>
    h("li", {}, badge(g.passed ? "pass" : "fail", g.passed ? "ok" : "bad"), ` ${g.gate}: ${g.detail}`)));
}

function versionRow(model, v) {
  const ref = `${model.name}@${v.version}`;
  return h("tr", { "data-version": ref },
    h("td", {}, h("strong", {}, `v${v.version}`)),
    h("td", {}, v.aliases.map((a) => badge(a, "alias"))),
    h("td", {}, v.store_name ? link(`#/runs/${encodeURIComponent(v.store_name)}`, v.store_name)
      : h("span", { class: "muted", title: v.run_dir }, v.run_dir.split("/").pop())),
    h("td", {}, when(v.created)),
    h("td", {}, Object.entries(v.promotions).map(([alias, d]) =>
      h("div", {}, `${alias}: `, decisionBadge(d.decision), ` ${d.metric} (margin ${num(d.margin)})`, gates(d.details)))),
    h("td", {}, link(`#/lineage?ref=${encodeURIComponent(ref)}`, "lineage"), " · ",
      link(`#/playground?a=${encodeURIComponent(ref)}`, "chat")));
}

function historyRow(e) {
  const v = (n) => (n === null || n === undefined ? "none" : `v${n}`);
  const move = e.from === e.to ? `stays ${v(e.to)}` : `${v(e.from)} → ${v(e.to)}`;
  return h("tr", {},
    h("td", {}, when(e.time)), h("td", {}, e.who || ""), h("td", {}, e.kind),
    h("td", {}, badge(e.alias, "alias")), h("td", {}, move),
    h("td", {}, e.kind === "promotion" ? [decisionBadge(e.decision), ` candidate v${e.candidate} on ${e.metric}`,
      gates(e.details)] : "moved by hand"));
}

export async function registryPage(view, ctx) {
  const { data } = await get("/dashboard/api/registry", { signal: ctx.signal });
  view.append(h("h1", {}, "Registry"),
    h("p", { class: "muted" }, "Registered versions (NAME@VERSION), their aliases (NAME@ALIAS, served as such), and every alias move and promotion decision."));
  if (!data.length) {
    view.append(section("No registered models",
      h("p", {}, "Register a run with ", h("code", {}, "affina registry register RUN --name NAME"), ".")));
  }
  for (const model of data) {
    const metric = model.tags["affina.primary_metric"];
    view.append(h("section", { class: "card", "data-model": model.name },
      h("h2", {}, model.name, " ", Object.entries(model.aliases).map(([a, v]) => badge(`${a} → v${v}`, "alias"))),
      metric ? h("p", { class: "muted" }, `promotion compares versions on ${metric}`) : null,
      table(["version", "aliases", "run", "registered", "promotion decisions", ""],
        model.versions.slice().reverse().map((v) => versionRow(model, v)), { class: "versions-table" }),
      model.history.length ? [h("h3", {}, "Alias history"),
        table(["time", "who", "kind", "alias", "move", "decision"], model.history.slice().reverse().map(historyRow),
          { class: "history-table" })] : null));
  }
}
