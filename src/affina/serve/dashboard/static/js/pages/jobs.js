// Fine-tuning jobs through the OpenAI-shaped API: upload a file (POST /v1/files), start a job
// (POST /v1/fine_tuning/jobs), watch its status, progress (its metrics events) and learning
// curve (metrics events and checkpoints), cancel, pause or resume it.

import { ApiError, badge, errorBox, get, h, link, num, query, request, section, table, when } from "../api.js";
import { lineChart } from "../charts.js";

const ACTIVE = new Set(["validating_files", "queued", "running", "paused", "pausing", "cancelling"]);

export function jobBadge(status) {
  const kind = { succeeded: "ok", failed: "bad", cancelled: "muted", running: "info", queued: "info",
    validating_files: "info", paused: "warn" }[status] || "";
  return badge(String(status).replace("_", " "), kind);
}

// The newest metrics event's step of total_steps, or the job's status alone.
export function jobProgressText(job, metrics) {
  if (job.status === "succeeded") return "done";
  const last = metrics && metrics.length ? metrics[metrics.length - 1] : null;
  if (last && last.total_steps) return `step ${last.step} of ${last.total_steps}`;
  return ACTIVE.has(job.status) ? "waiting for the first step" : "—";
}

function progressBar(job, metrics) {
  const last = metrics.length ? metrics[metrics.length - 1] : null;
  const fraction = job.status === "succeeded" ? 1 : last && last.total_steps ? last.step / last.total_steps : 0;
  return h("div", { class: "progress", title: jobProgressText(job, metrics), "data-fraction": fraction.toFixed(3) },
    h("div", { class: "progress-bar", style: null, "data-width": Math.round(fraction * 100) }),
    h("span", { class: "progress-text" }, jobProgressText(job, metrics)));
}

// The fill's width is set from a data attribute: the page's CSP allows no inline style attribute.
function sizeBars(root) {
  root.querySelectorAll(".progress-bar").forEach((el) => { el.style.width = `${el.dataset.width}%`; });
}

// Every metrics event of a job, oldest first (the API pages newest first).
async function metricsOf(id, signal) {
  const events = [];
  let after = null;
  for (let page = 0; page < 20; page += 1) {
    const res = await get(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events${query({ limit: 100, after })}`, { signal });
    events.push(...res.data);
    if (!res.has_more || !res.data.length) break;
    after = res.data[res.data.length - 1].id;
  }
  events.reverse();
  return { events, metrics: events.filter((e) => e.type === "metrics" && e.data).map((e) => e.data) };
}

function startForm(models, onStarted) {
  const file = h("input", { id: "job-file", type: "file", accept: ".jsonl,.json,.csv,.txt,.parquet", required: true });
  const validation = h("input", { id: "job-validation-file", type: "file", accept: ".jsonl,.json,.csv,.txt,.parquet" });
  const model = h("select", { id: "job-model" }, models.map((m) => h("option", { value: m }, m)));
  const method = h("select", { id: "job-method" }, ["supervised", "dpo"].map((m) => h("option", { value: m }, m)));
  const epochs = h("input", { id: "job-epochs", type: "number", min: 1, max: 50, placeholder: "auto", size: 5 });
  const batch = h("input", { id: "job-batch", type: "number", min: 1, max: 256, placeholder: "auto", size: 5 });
  const lr = h("input", { id: "job-lr", type: "number", min: 0, step: "any", placeholder: "auto", size: 6 });
  const suffix = h("input", { id: "job-suffix", type: "text", maxlength: 64, placeholder: "e.g. support-bot", size: 16 });
  const seed = h("input", { id: "job-seed", type: "number", placeholder: "random", size: 8 });
  const state = h("p", { id: "job-form-state", class: "muted", role: "status" });
  const submit = h("button", { id: "job-start", type: "submit" }, "Upload and start");

  async function upload(input) {
    const body = new FormData();
    body.append("purpose", "fine-tune");
    body.append("file", input.files[0]);
    return request("/v1/files", { method: "POST", body });
  }

  const form = h("form", { class: "job-form", onsubmit: async (e) => {
    e.preventDefault();
    if (!file.files.length) return;
    submit.disabled = true;
    try {
      state.textContent = `uploading ${file.files[0].name}…`;
      const training = await upload(file);
      const valid = validation.files.length ? await upload(validation) : null;
      const hyperparameters = {};
      if (epochs.value) hyperparameters.n_epochs = Number(epochs.value);
      if (batch.value) hyperparameters.batch_size = Number(batch.value);
      if (lr.value) hyperparameters.learning_rate_multiplier = Number(lr.value);
      state.textContent = `uploaded ${training.id}; starting the job…`;
      const body = { model: model.value, training_file: training.id,
        method: { type: method.value, [method.value]: { hyperparameters } } };
      if (valid) body.validation_file = valid.id;
      if (suffix.value.trim()) body.suffix = suffix.value.trim();
      if (seed.value) body.seed = Number(seed.value);
      const job = await request("/v1/fine_tuning/jobs", { method: "POST", json: body });
      state.textContent = `started ${job.id}`;
      form.reset();
      onStarted(job);
    } catch (err) {
      state.replaceChildren(errorBox(err));
    } finally {
      submit.disabled = false;
    }
  } },
  h("label", {}, "training file ", file), h("label", {}, "validation file (optional) ", validation),
  h("label", {}, "base model ", model), h("label", {}, "method ", method),
  h("label", {}, "epochs ", epochs), h("label", {}, "batch size ", batch), h("label", {}, "learning-rate multiplier ", lr),
  h("label", {}, "suffix ", suffix), h("label", {}, "seed ", seed), h("div", { class: "actions" }, submit), state);
  return form;
}

async function jobAction(id, action) {
  return request(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${action}`, { method: "POST" });
}

function actions(job, refresh) {
  const button = (action, label) => h("button", { type: "button", class: `job-${action}`, onclick: async (e) => {
    e.stopPropagation();
    e.target.disabled = true;
    try { await jobAction(job.id, action); } catch (err) { alert(err.message); }
    refresh();
  } }, label);
  const out = [];
  if (ACTIVE.has(job.status) && job.status !== "paused") out.push(button("pause", "Pause"));
  if (job.status === "paused") out.push(button("resume", "Resume"));
  if (ACTIVE.has(job.status)) out.push(button("cancel", "Cancel"));
  return out;
}

function resultLinks(job) {
  if (!job.fine_tuned_model) return "—";
  const m = encodeURIComponent(job.fine_tuned_model);
  return h("span", { class: "result-links" }, h("strong", {}, job.fine_tuned_model), " ",
    link(`#/playground?a=${m}&b=base`, "chat"), " · ", link(`#/runs/${m}`, "run"), " · ", link(`#/lineage?ref=${m}`, "lineage"));
}

export async function jobsPage(view, ctx) {
  if (ctx.rest.length) return jobPage(view, ctx, ctx.rest[0]);
  let list;
  try {
    list = await get("/v1/fine_tuning/jobs?limit=50", { signal: ctx.signal });
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      view.append(h("h1", {}, "Jobs"), h("p", { class: "error", id: "no-jobs-api" },
        "This server has no fine-tuning jobs API (/v1/fine_tuning/jobs answered 404)."));
      return;
    }
    throw e;
  }
  // A job fine-tunes the base this server serves, under any of its names.
  const session = await get("/dashboard/api/session", { signal: ctx.signal });
  const bases = [session.base, ...session.base_aliases.filter((a) => a !== session.base)];
  let anyActive = list.data.some((j) => ACTIVE.has(j.status));
  const listBox = h("div", {});
  const refresh = async () => {
    const fresh = await get("/v1/fine_tuning/jobs?limit=50", { signal: ctx.signal });
    anyActive = fresh.data.some((j) => ACTIVE.has(j.status));
    await drawList(fresh.data);
  };
  async function drawList(jobs) {
    const progress = await Promise.all(jobs.map((j) => (ACTIVE.has(j.status)
      ? get(`/v1/fine_tuning/jobs/${encodeURIComponent(j.id)}/events?limit=20`, { signal: ctx.signal })
        .then((r) => r.data.filter((e) => e.type === "metrics" && e.data).map((e) => e.data).reverse()).catch(() => [])
      : Promise.resolve([]))));
    listBox.replaceChildren(table(["job", "created", "model", "status", "progress", "result", ""],
      jobs.map((j, i) => h("tr", { class: "job", "data-job": j.id, "data-status": j.status },
        h("td", { class: "mono nowrap" }, link(`#/jobs/${encodeURIComponent(j.id)}`, j.id)), h("td", {}, when(j.created_at)),
        h("td", {}, j.model), h("td", {}, jobBadge(j.status), j.error ? h("div", { class: "error" }, j.error.message) : null),
        h("td", {}, progressBar(j, progress[i])), h("td", {}, resultLinks(j)), h("td", {}, actions(j, refresh)))),
      { class: "jobs-table" }));
    sizeBars(listBox);
  }
  view.append(h("h1", {}, "Jobs"),
    section("Start a job", h("p", { class: "muted" }, "Upload a JSONL file of chat messages or prompt/completion pairs; the job trains on it and the result is served under its own name."),
      startForm(bases, () => refresh())),
    section("Jobs", listBox));
  await drawList(list.data);
  // Every 2 s while a job is active; every 10 s otherwise (jobs started elsewhere show up).
  let ticks = 0;
  ctx.every(2000, () => {
    ticks += 1;
    if (anyActive || ticks % 5 === 0) refresh().catch(() => {});
  });
}

async function jobPage(view, ctx, id) {
  const box = h("div", {});
  view.append(h("p", {}, link("#/jobs", "← jobs")), box);
  const draw = async () => {
    const [job, { events, metrics }, checkpoints] = await Promise.all([
      get(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`, { signal: ctx.signal }),
      metricsOf(id, ctx.signal),
      get(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints?limit=100`, { signal: ctx.signal }).catch(() => ({ data: [] }))]);
    const points = (key) => metrics.filter((m) => Number.isFinite(m[key])).map((m) => [m.step, m[key]]);
    const ckpts = checkpoints.data.slice().sort((a, b) => a.step_number - b.step_number);
    box.replaceChildren(...[
      h("h1", { "data-status": job.status, id: "job-title" }, job.id, " ", jobBadge(job.status)),
      job.error ? h("p", { class: "error" }, `${job.error.code}: ${job.error.message}`) : null,
      h("div", { class: "actions" }, actions(job, draw), h("div", { class: "wide-progress" }, progressBar(job, metrics))),
      h("div", { class: "grid2" },
        section("Job", h("dl", { class: "facts" },
          h("dt", {}, "base model"), h("dd", {}, job.model),
          h("dt", {}, "method"), h("dd", {}, job.method ? job.method.type : "supervised"),
          h("dt", {}, "training file"), h("dd", {}, job.training_file),
          h("dt", {}, "validation file"), h("dd", {}, job.validation_file || "—"),
          h("dt", {}, "hyperparameters"), h("dd", {}, Object.entries(job.hyperparameters || {}).map(([k, v]) => `${k} ${v}`).join(" · ") || "—"),
          h("dt", {}, "seed"), h("dd", {}, String(job.seed)),
          h("dt", {}, "created"), h("dd", {}, when(job.created_at)),
          h("dt", {}, "finished"), h("dd", {}, when(job.finished_at)),
          h("dt", {}, "trained tokens"), h("dd", {}, num(job.trained_tokens)),
          h("dt", {}, "result"), h("dd", { id: "job-result" }, resultLinks(job)))),
        section("Learning curve", lineChart({ series: [
          { name: "train loss", points: points("train_loss") },
          { name: "validation loss", points: points("valid_loss"), dashed: true },
          { name: "checkpoints", points: ckpts.filter((c) => Number.isFinite(c.metrics.train_loss ?? c.metrics.valid_loss))
            .map((c) => [c.step_number, c.metrics.valid_loss ?? c.metrics.train_loss]), color: "#2a9d63", pointsOnly: true }] }))),
      section("Checkpoints", table(["step", "checkpoint model", "train loss", "validation loss", "created"],
        ckpts.map((c) => h("tr", {}, h("td", {}, num(c.step_number)), h("td", {}, c.fine_tuned_model_checkpoint),
          h("td", {}, num(c.metrics.train_loss)), h("td", {}, num(c.metrics.valid_loss)), h("td", {}, when(c.created_at)))))),
      section("Events", table(["time", "level", "message"], events.slice().reverse().map((e) => h("tr", { class: `event ${e.level}` },
        h("td", {}, when(e.created_at)), h("td", {}, e.level), h("td", {}, e.message))), { class: "events-table" }))].filter(Boolean));
    sizeBars(box);
    return job;
  };
  const job = await draw();
  if (ACTIVE.has(job.status)) {
    let running = true;
    ctx.every(2000, async () => {
      if (!running) return;
      try {
        const j = await draw();
        running = ACTIVE.has(j.status);
      } catch (e) { /* shown on the next successful draw */ }
    });
  }
}
