// Lineage of any registered version, alias or run: source data → prepared data → run →
// artifact → versions and aliases → requests served, drawn as a graph.

import { get, h, link, num, section, table, when } from "../api.js";
import { lineageGraph } from "../charts.js";

async function choices(signal) {
  const [runs, registry, models] = await Promise.all([
    get("/dashboard/api/runs", { signal }).catch(() => ({ data: [] })),
    get("/dashboard/api/registry", { signal }).catch(() => ({ data: [] })),
    get("/v1/models", { signal }).catch(() => ({ data: [] }))]);
  const refs = models.data.map((m) => m.id).filter((id) => id.startsWith("ft:"));
  for (const m of registry.data) {
    for (const v of m.versions) refs.push(`${m.name}@${v.version}`);
    for (const a of Object.keys(m.aliases)) refs.push(`${m.name}@${a}`);
  }
  return [...refs, ...runs.data.map((r) => r.name)];
}

export async function lineagePage(view, ctx) {
  const ref = ctx.params.get("ref") || "";
  const input = h("input", { id: "lineage-ref", list: "lineage-refs", value: ref, placeholder: "NAME@VERSION, NAME@ALIAS or a run", size: 36 });
  const list = h("datalist", { id: "lineage-refs" });
  const form = h("form", { class: "toolbar", onsubmit: (e) => {
    e.preventDefault();
    location.hash = `#/lineage?ref=${encodeURIComponent(input.value.trim())}`;
  } }, h("label", {}, "Version or run ", input), list, h("button", { type: "submit" }, "Show lineage"));
  view.append(h("h1", {}, "Lineage"), form);
  choices(ctx.signal).then((refs) => list.replaceChildren(...refs.map((r) => h("option", { value: r }))));
  if (!ref) {
    view.append(h("p", { class: "muted" }, "Pick a registered version, an alias or a run to see where it came from and where it went."));
    return;
  }
  const info = await get(`/dashboard/api/lineage?ref=${encodeURIComponent(ref)}`, { signal: ctx.signal });
  view.append(section(`Lineage of ${info.ref}`, lineageGraph(info.graph, { onNode: (node) => {
    if (node.kind === "run" && info.store_name) location.hash = `#/runs/${encodeURIComponent(info.store_name)}`;
    else if ((node.kind === "run" || node.kind === "job") && info.job) location.hash = `#/jobs/${encodeURIComponent(info.job.job_id)}`;
    else if (node.kind === "version" || node.kind === "alias") location.hash = `#/lineage?ref=${encodeURIComponent(node.label)}`;
    else if (node.kind === "served") location.hash = `#/requests?model=${encodeURIComponent(info.registry.length ? `${info.registry[0].name}@${info.registry[0].version}` : info.store_name || "")}`;
  } })));

  const p = info.prepared, r = info.run, a = info.artifact;
  view.append(h("div", { class: "grid2" },
    section("Source data", table(["file", "role", "format", "rows", "sha256"], info.sources.map((f) => h("tr", {},
      h("td", { title: f.path }, f.path.split("/").pop()), h("td", {}, f.role), h("td", {}, f.format),
      h("td", {}, num(f.rows)), h("td", { class: "mono" }, String(f.sha256 || "").slice(0, 16))))),
    h("p", { class: "muted" }, `formats ${p.formats.join(", ")}; template ${p.chat_template}; max_length ${p.max_length}; packing ${p.packing ? "on" : "off"}`)),
    section("Run", h("dl", { class: "facts" },
      h("dt", {}, "directory"), h("dd", {}, info.store_name ? link(`#/runs/${encodeURIComponent(info.store_name)}`, r.dir) : r.dir),
      h("dt", {}, "created"), h("dd", {}, when(r.created)),
      h("dt", {}, "method"), h("dd", {}, `${r.method.name} · ${num(r.method.trainable_params)} trainable`),
      h("dt", {}, "base"), h("dd", {}, `${r.base_model.spec} · ${r.base_model.fingerprint || ""}`),
      h("dt", {}, "seed / git"), h("dd", {}, `${r.seed} · ${r.git_commit || "—"}`),
      h("dt", {}, "MLflow run"), h("dd", {}, r.mlflow_run_id || "—"),
      info.job ? [h("dt", {}, "fine-tuning job"), h("dd", {}, link(`#/jobs/${encodeURIComponent(info.job.job_id)}`, info.job.job_id),
        ` · ${info.job.fine_tuned_model} · file ${info.job.training_file}`)] : null,
      h("dt", {}, "artifact"), h("dd", {}, `${a.dir} (${Object.keys(a.files).length} files, ${
        a.verified === null ? "not registered" : a.verified ? "hashes verified" : "MODIFIED since registration"})`),
      h("dt", {}, "served"), h("dd", {}, info.served ? `${num(info.served.requests)} requests${info.served.requests ? `, ${when(info.served.first)} → ${when(info.served.last)}` : ""}` : "no request log")))));
}
