// The page: a hash router over the pages, one render at a time. Timers a page starts are
// stopped when another page is shown.

import { errorBox, get, h } from "./api.js";
import { overviewPage } from "./pages/overview.js";
import { jobsPage } from "./pages/jobs.js";
import { runsPage } from "./pages/runs.js";
import { registryPage } from "./pages/registry.js";
import { lineagePage } from "./pages/lineage.js";
import { requestsPage } from "./pages/requests.js";
import { playgroundPage } from "./pages/playground.js";

const PAGES = { "": overviewPage, jobs: jobsPage, runs: runsPage, registry: registryPage,
  lineage: lineagePage, requests: requestsPage, playground: playgroundPage };

let current = null;

// "#/runs/alpha?x=1" → {page: "runs", rest: ["alpha"], params}
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, q] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "", rest: parts.slice(1), params: new URLSearchParams(q || "") };
}

class PageContext {
  constructor(route) {
    Object.assign(this, route);
    this.controller = new AbortController();
    this.timers = [];
  }
  get signal() { return this.controller.signal; }
  get active() { return current === this; }
  every(ms, fn) { this.timers.push(setInterval(() => this.active && fn(), ms)); }
  stop() { this.controller.abort(); this.timers.forEach(clearInterval); }
}

async function render() {
  const route = parseHash();
  if (current) current.stop();
  const ctx = new PageContext(route);
  current = ctx;
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === route.page));
  const main = document.getElementById("main");
  const page = PAGES[route.page];
  // data-hash and data-ready say which route this view shows and that it has finished drawing.
  const view = h("div", { class: "page", "data-page": route.page || "overview", "data-hash": location.hash });
  main.replaceChildren(view);
  if (!page) {
    view.append(errorBox(`no page called ${route.page}`));
    return;
  }
  try {
    await page(view, ctx);
  } catch (e) {
    if (ctx.active && e.name !== "AbortError") view.append(errorBox(e));
  }
  view.dataset.ready = "1";
}

async function showSession() {
  try {
    const info = await get("/dashboard/api/session");
    const el = document.getElementById("session");
    el.replaceChildren(`base ${info.base_spec}`, " · ",
      info.auth === "keys" ? `key ${info.key_id}` : "open (loopback)");
  } catch (e) { /* the page shows the error */ }
}

window.addEventListener("hashchange", render);
render().then(showSession);
