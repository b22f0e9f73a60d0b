// Crucible web UI: a hash-routed single page over the /v1 API, in plain JavaScript.
// No framework and no build step, so the API can serve these files as they are; charts are
// inline SVG drawn here, so nothing is loaded from anywhere but the API's own origin.
"use strict";

(() => {
  const TOKEN_KEY = "crucible.token";
  // Relative to /ui/, so the UI keeps working when a proxy mounts the API under a prefix.
  const API = "../v1";
  const POLL_MS = 3000;
  const ACTIVE = new Set(["queued", "running"]);
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
    "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const main = document.getElementById("main");
  const nav = document.getElementById("nav");

  // Each navigation bumps the generation; a poll or response from an older page sees the
  // mismatch and stops, so a slow reply never paints over the page the user moved to.
  let generation = 0;
  let timer = null;
  // Blob URLs of audit reports are revoked on navigation, or each visit would leak one.
  let blobUrls = [];

  // ---- DOM helpers: text always goes through textContent, never innerHTML, so names and
  // values coming from the API cannot inject markup.

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function show(...children) {
    main.replaceChildren(...children.flat().filter(Boolean));
  }

  function fmt(v, digits = 4) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return String(v);
      return Number(v.toPrecision(digits)).toString();
    }
    return String(v);
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    return s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
  }

  function badge(status) {
    return h("span", { class: `badge s-${status}` }, status);
  }

  // ---- API access

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.detail) || `HTTP ${status}`);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  // ``signIn``: the login form's own check, which reports a refusal itself rather than
  // navigating to the login page it is already on (that would redraw the form and lose the
  // message).
  async function request(path, asText = false, signIn = false) {
    const res = await fetch(`${API}${path}`, {
      headers: { Authorization: `Bearer ${token()}` },
      cache: "no-store",
    });
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      if (!signIn) location.hash = "#/login";
      throw new ApiError(401, { detail: "the token was refused; sign in again" });
    }
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch (_) { /* not JSON: keep the status alone */ }
      throw new ApiError(res.status, body);
    }
    return asText ? res.text() : res.json();
  }

  // ---- routing

  function route() {
    generation += 1;
    clearTimeout(timer);
    for (const u of blobUrls) URL.revokeObjectURL(u);
    blobUrls = [];
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (!token() || parts[0] === "login") {
      nav.hidden = true;
      loginView();
      return;
    }
    nav.hidden = false;
    const gen = generation;
    let view;
    if (parts[0] === "jobs" && parts[1]) view = jobView(parts[1], gen);
    else if (parts[0] === "endpoints" && parts[1]) view = endpointView(parts[1], gen);
    else if (parts[0] === "endpoints") view = endpointsView(gen);
    else view = jobsView(gen);
    view.catch((err) => {
      if (gen !== generation || err.status === 401) return;
      show(h("p", { class: "error", role: "alert" }, `Could not load: ${err.message}`));
    });
  }

  function poll(gen, fn) {
    timer = setTimeout(() => {
      if (gen === generation) fn().catch(() => poll(gen, fn));
    }, POLL_MS);
  }

  // ---- login

  function loginView() {
    const input = h("input", {
      id: "token", type: "password", autocomplete: "off", required: true,
      placeholder: "crucible token", "aria-label": "API token",
    });
    const message = h("p", { class: "error", role: "alert" });
    const form = h("form", { class: "login", id: "login" },
      h("h1", {}, "Sign in"),
      h("p", { class: "muted" },
        "Paste an API token (the admin token is in <data dir>/token). It is kept in this "
        + "tab only and sent with every request."),
      input,
      h("button", { type: "submit" }, "Sign in"),
      message);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        await request("/jobs?limit=1", false, true);
        location.hash = "#/jobs";
      } catch (err) {
        sessionStorage.removeItem(TOKEN_KEY);
        message.textContent = err.message;
      }
    });
    show(form);
    input.focus();
  }

  // ---- jobs list

  async function jobsView(gen) {
    const data = await request("/jobs?limit=100");
    if (gen !== generation) return;
    const rows = data.items.map((j) => {
      const best = j.best_trial && j.best_trial.metrics;
      const metric = best ? primaryMetric(j.spec, [best]) : null;
      return h("tr", { "data-job": j.id },
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.name || j.id)),
        h("td", { class: "mono" }, j.id),
        h("td", {}, badge(j.status)),
        h("td", {}, when(j.created_at)),
        h("td", {}, seconds(j.duration_s)),
        h("td", {}, metric ? `${metric} ${fmt(best[metric])}` : "–"));
    });
    show(
      h("h1", {}, "Jobs"),
      h("p", { class: "muted" }, `${data.total} job(s)`),
      rows.length
        ? h("table", { id: "jobs" },
          h("thead", {}, h("tr", {}, ["Name", "Id", "Status", "Created", "Duration", "Best"]
            .map((c) => h("th", {}, c)))),
          h("tbody", {}, rows))
        : h("p", {}, "No jobs yet. Submit one with `crucible submit spec.yaml`."));
    if (data.items.some((j) => ACTIVE.has(j.status))) poll(gen, () => jobsView(gen));
  }

  // ---- one job

  function isLowerBetter(metric) {
    return /loss|rmse|mae|mse|error/.test(metric);
  }

  // The search metric the job optimises, or the first known metric its trials report.
  function primaryMetric(spec, metricsList) {
    const named = spec && spec.search && spec.search.metric;
    if (named) return named;
    const keys = new Set(metricsList.flatMap((m) => Object.keys(m || {})));
    for (const k of ["val_accuracy", "val_rmse", "val_auc", "val_loss"]) if (keys.has(k)) return k;
    return [...keys][0] || null;
  }

  async function jobView(id, gen) {
    const [job, trials] = await Promise.all([
      request(`/jobs/${encodeURIComponent(id)}`),
      request(`/jobs/${encodeURIComponent(id)}/trials`),
    ]);
    if (gen !== generation) return;
    const items = trials.items;
    const metric = primaryMetric(job.spec, items.map((t) => t.metrics))
      || primaryMetric(null, items.flatMap((t) => t.history));
    const header = [
      h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
      h("h1", {}, job.name || job.id, " ", badge(job.status)),
      h("dl", { class: "facts" },
        fact("Id", job.id), fact("Dataset", job.dataset_id),
        fact("Created", when(job.created_at)), fact("Started", when(job.started_at)),
        fact("Finished", when(job.finished_at)), fact("Duration", seconds(job.duration_s)),
        fact("Attempts", job.attempts)),
      job.error ? h("p", { class: "error" }, job.error) : null,
    ];
    const live = h("section", { id: "live" },
      h("h2", {}, "Trials", ACTIVE.has(job.status) ? h("span", { class: "muted" }, " · live") : null),
      leaderboard(items, metric, job.best_trial && job.best_trial.trial_id),
      h("h2", {}, "Learning curves"),
      curvesPanel(items, metric));
    const results = h("div", { id: "results" });
    show(header, live, results);
    if (ACTIVE.has(job.status)) {
      poll(gen, () => jobView(id, gen));
      return;
    }
    if (job.status === "succeeded") await resultsPanel(job, results, gen);
  }

  function fact(label, value) {
    return [h("dt", {}, label), h("dd", {}, value === null || value === undefined ? "–" : String(value))];
  }

  function leaderboard(items, metric, bestKey) {
    if (!items.length) return h("p", { class: "muted" }, "No trials yet.");
    const lower = metric && isLowerBetter(metric);
    const score = (t) => {
      const v = t.metrics && metric ? t.metrics[metric] : undefined;
      return typeof v === "number" ? v : null;
    };
    const sorted = [...items].sort((a, b) => {
      const x = score(a); const y = score(b);
      if (x === null) return y === null ? 0 : 1;
      if (y === null) return -1;
      return lower ? x - y : y - x;
    });
    const extra = new Set();
    for (const t of items) for (const k of Object.keys(t.metrics || {})) if (k !== metric) extra.add(k);
    const cols = [...extra].filter((k) => !k.startsWith("time") && k !== "epoch").slice(0, 4);
    return h("table", { id: "leaderboard" },
      h("thead", {}, h("tr", {},
        ["#", "Trial", "Status", metric || "metric", ...cols, "Epochs", "Config"].map((c) => h("th", {}, c)))),
      h("tbody", {}, sorted.map((t, i) => h("tr", { class: t.trial_id === bestKey ? "best" : null },
        h("td", {}, i + 1),
        h("td", { class: "mono" }, t.trial_id),
        h("td", {}, badge(t.status)),
        h("td", { class: "num" }, fmt(score(t))),
        cols.map((k) => h("td", { class: "num" }, fmt(t.metrics ? t.metrics[k] : null))),
        h("td", { class: "num" }, t.epochs_completed),
        h("td", { class: "mono small" }, configText(t.config))))));
  }

  function configText(config) {
    return Object.entries(config || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join("  ");
  }

  // A chart per page load: the chosen per-epoch metric, one line per trial.
  function curvesPanel(items, metric) {
    const keys = new Set();
    for (const t of items) for (const e of t.history) for (const k of Object.keys(e)) if (k !== "epoch" && typeof e[k] === "number") keys.add(k);
    if (!keys.size) return h("p", { class: "muted" }, "No epochs reported yet.");
    const options = [...keys].sort();
    const saved = sessionStorage.getItem("crucible.curve");
    let chosen = keys.has(saved) ? saved : keys.has(metric) ? metric : options[0];
    const holder = h("div", {});
    const select = h("select", { id: "curve-metric", "aria-label": "metric" },
      options.map((k) => h("option", { value: k, selected: k === chosen }, k)));
    select.addEventListener("change", () => {
      chosen = select.value;
      // Kept for the next poll's redraw, which rebuilds this panel.
      sessionStorage.setItem("crucible.curve", chosen);
      holder.replaceChildren(lineChart(items, chosen));
    });
    holder.append(lineChart(items, chosen));
    return h("div", { class: "curves" }, h("label", {}, "Metric ", select), holder);
  }

  function niceTicks(lo, hi, n) {
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const raw = (hi - lo) / n;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  function lineChart(items, key) {
    const W = 720; const H = 300;
    const m = { l: 60, r: 150, t: 12, b: 40 };
    const series = items.map((t, i) => ({
      name: t.trial_id,
      color: PALETTE[i % PALETTE.length],
      points: t.history.filter((e) => typeof e[key] === "number").map((e) => [e.epoch, e[key]]),
    })).filter((s) => s.points.length);
    const all = series.flatMap((s) => s.points);
    const xs = all.map((p) => p[0]); const ys = all.map((p) => p[1]);
    const x0 = Math.min(...xs); const x1 = Math.max(...xs, x0 + 1);
    const yt = niceTicks(Math.min(...ys), Math.max(...ys), 5);
    const y0 = Math.min(yt[0], ...ys); const y1 = Math.max(yt[yt.length - 1], ...ys);
    const X = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
    const Y = (v) => H - m.b - ((v - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
    const g = svg("svg", { class: "chart", id: "curves", viewBox: `0 0 ${W} ${H}`, width: W, role: "img",
      "aria-label": `${key} per epoch, one line per trial` });
    for (const v of yt) {
      g.append(svg("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), class: "grid" }),
        svg("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v, 3)));
    }
    for (const v of niceTicks(x0, x1, Math.min(8, x1 - x0)).filter(Number.isInteger)) {
      g.append(svg("text", { x: X(v), y: H - m.b + 16, "text-anchor": "middle", class: "tick" }, v));
    }
    g.append(svg("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }),
      svg("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: "axis" }),
      svg("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", class: "label" }, "epoch"));
    series.forEach((s, i) => {
      const d = s.points.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
      const last = s.points[s.points.length - 1];
      g.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, class: "series" },
        svg("title", {}, s.name)),
      svg("circle", { cx: X(last[0]), cy: Y(last[1]), r: 3, fill: s.color }));
      const ly = m.t + 8 + i * 18;
      g.append(svg("rect", { x: W - m.r + 12, y: ly - 8, width: 10, height: 10, fill: s.color }),
        svg("text", { x: W - m.r + 28, y: ly + 1, class: "legend" }, s.name.length > 18 ? `${s.name.slice(0, 17)}…` : s.name));
    });
    return g;
  }

  // ---- results of a finished job

  async function resultsPanel(job, holder, gen) {
    const id = encodeURIComponent(job.id);
    const [evaluation, report] = await Promise.all([
      request(`/jobs/${id}/evaluation`).catch((e) => e),
      job.spec && job.spec.audit ? request(`/jobs/${id}/audit.html`, true).catch((e) => e) : null,
    ]);
    if (gen !== generation) return;
    holder.append(h("h2", {}, "Evaluation on the test split"),
      evaluation instanceof Error ? h("p", { class: "muted" }, evaluation.message) : evaluationView(evaluation));
    if (report === null) return;
    holder.append(h("h2", {}, "Fairness audit"));
    if (report instanceof Error) {
      holder.append(h("p", { class: "muted" }, report.message));
      return;
    }
    const url = URL.createObjectURL(new Blob([report], { type: "text/html" }));
    blobUrls.push(url);
    // Sandboxed without scripts: the report is static, and nothing in it may ever run and
    // read the token in sessionStorage. allow-same-origin is harmless without scripts and
    // keeps the frame in this page's process, so it is painted with it (and in screenshots).
    const frame = h("iframe", {
      id: "audit-frame", src: url, sandbox: "allow-same-origin", title: "Audit report",
    });
    holder.append(
      h("p", {}, h("a", { href: url, target: "_blank", rel: "noopener", download: `audit-${job.id}.html` },
        "Download the report")),
      frame);
  }

  function evaluationView(ev) {
    const rows = [];
    const base = ev.baseline || {};
    const add = (label, key) => {
      if (ev[key] !== undefined) rows.push(h("tr", {}, h("th", {}, label), h("td", { class: "num" }, fmt(ev[key])),
        h("td", { class: "num muted" }, base[key] !== undefined ? fmt(base[key]) : "")));
    };
    if (ev.task === "regression") {
      add("MAE", "mae"); add("RMSE", "rmse"); add("R²", "r2"); add("Mean prediction", "mean_prediction");
    } else {
      add("Accuracy", "accuracy"); add("Precision", "precision"); add("Recall", "recall");
      add("F1", "f1"); add("F1 (macro)", "f1_macro"); add("ROC-AUC", "roc_auc");
      add("Threshold", "threshold");
    }
    const parts = [
      h("p", { class: "muted" }, `Task: ${ev.task || "classification"} · ${fmt(ev.num_rows)} test rows`
        + (ev.positive_class !== undefined ? ` · positive class ${ev.positive_class}` : "")),
      h("div", { class: "eval" },
        h("table", { id: "evaluation" },
          h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", {}, "Model"), h("th", {}, "Baseline"))),
          h("tbody", {}, rows)),
        ev.confusion_matrix ? confusionMatrix(ev.confusion_matrix, ev.classes || []) : null),
      base.strategy ? h("p", { class: "muted" }, `Baseline: ${base.strategy}.`) : null,
    ];
    return h("div", {}, parts);
  }

  function confusionMatrix(cm, classes) {
    const n = cm.length;
    const cell = 64; const pad = 110; const top = 48;
    const W = pad + n * cell + 10; const H = top + n * cell + 10;
    const max = Math.max(1, ...cm.flat());
    const label = (i) => {
      const s = String(classes[i] !== undefined ? classes[i] : i);
      return s.length > 12 ? `${s.slice(0, 11)}…` : s;
    };
    const g = svg("svg", { class: "chart cm", id: "confusion-matrix", viewBox: `0 0 ${W} ${H}`,
      width: W, role: "img", "aria-label": "confusion matrix: rows are true classes, columns predicted" });
    g.append(svg("text", { x: pad + (n * cell) / 2, y: 16, "text-anchor": "middle", class: "label" }, "predicted"),
      svg("text", { x: 14, y: top + (n * cell) / 2, "text-anchor": "middle", class: "label",
        transform: `rotate(-90 14 ${top + (n * cell) / 2})` }, "true"));
    for (let i = 0; i < n; i += 1) {
      g.append(svg("text", { x: pad + i * cell + cell / 2, y: top - 8, "text-anchor": "middle", class: "tick" }, label(i)),
        svg("text", { x: pad - 8, y: top + i * cell + cell / 2 + 4, "text-anchor": "end", class: "tick" }, label(i)));
      for (let j = 0; j < n; j += 1) {
        const v = cm[i][j];
        const share = v / max;
        // Lightness tracks the count; text flips to white where the cell gets dark.
        const fill = `hsl(${i === j ? 217 : 0}, 70%, ${Math.round(96 - share * 50)}%)`;
        g.append(svg("rect", { x: pad + j * cell, y: top + i * cell, width: cell - 2, height: cell - 2, fill, class: "cell" },
          svg("title", {}, `true ${label(i)}, predicted ${label(j)}: ${v}`)),
        svg("text", { x: pad + j * cell + cell / 2 - 1, y: top + i * cell + cell / 2 + 4, "text-anchor": "middle",
          class: share > 0.6 ? "count dark" : "count" }, v));
      }
    }
    return g;
  }

  // ---- endpoints

  async function endpointsView(gen) {
    const data = await request("/endpoints");
    if (gen !== generation) return;
    show(h("h1", {}, "Endpoints"),
      data.items.length
        ? h("table", { id: "endpoints" },
          h("thead", {}, h("tr", {}, ["Name", "Status", "Model", "URL", "Versions"].map((c) => h("th", {}, c)))),
          h("tbody", {}, data.items.map((e) => h("tr", {},
            h("td", {}, h("a", { href: `#/endpoints/${encodeURIComponent(e.name)}` }, e.name)),
            h("td", {}, badge(e.status)),
            h("td", { class: "mono" }, e.model_id || "–"),
            h("td", { class: "mono" }, e.url || "–"),
            h("td", { class: "num" }, e.history.length)))))
        : h("p", {}, "No endpoints yet. Promote a finished job to create one."));
  }

  async function endpointView(name, gen) {
    const e = await request(`/endpoints/${encodeURIComponent(name)}`);
    // Monitoring may be unreadable (an old bundle, a database hiccup): the page still shows.
    const mon = await request(`/endpoints/${encodeURIComponent(name)}/monitoring`).catch(() => null);
    if (gen !== generation) return;
    const ids = [...new Set(e.history.map((p) => p.model_id).filter(Boolean))];
    // A version whose model cannot be read still gets its history row, without lineage.
    const models = await Promise.all(ids.map((id) => request(`/models/${encodeURIComponent(id)}`).catch(() => null)));
    if (gen !== generation) return;
    const byId = new Map(models.filter(Boolean).map((m) => [m.id, m]));
    const rows = [...e.history].reverse().map((p) => {
      const m = byId.get(p.model_id);
      const job = m && m.lineage && m.lineage.job_id;
      return h("tr", { class: p.model_id === e.model_id ? "current" : null },
        h("td", {}, when(p.at)),
        h("td", { class: "mono" }, p.model_id || "–", p.model_id === e.model_id ? h("span", { class: "tag" }, "serving") : null),
        h("td", { class: "mono" }, p.previous_model_id || "–"),
        h("td", {}, badge(p.status)),
        h("td", {}, p.actor || "–"),
        h("td", {}, job ? h("a", { href: `#/jobs/${encodeURIComponent(job)}` }, job) : "–"),
        h("td", { class: "small" }, m ? metricsText(m.metrics) : ""),
        h("td", {}, m ? (m.audit_passed === null || m.audit_passed === undefined ? "–" : m.audit_passed ? "passed" : "failed") : "–"),
        h("td", { class: "small" }, p.detail || ""));
    });
    show(
      h("p", {}, h("a", { href: "#/endpoints" }, "← Endpoints")),
      h("h1", {}, e.name, " ", badge(e.status)),
      h("dl", { class: "facts" }, fact("Serving", e.model_id), fact("URL", e.url),
        e.canary ? fact("Canary", `${e.canary.model_id} (${e.canary.percent}% of requests)`) : null),
      monitoringSection(mon),
      h("h2", {}, "Version history"),
      h("table", { id: "versions" },
        h("thead", {}, h("tr", {}, ["When", "Model", "Replaced", "Status", "By", "Job", "Metrics", "Audit", "Detail"]
          .map((c) => h("th", {}, c)))),
        h("tbody", {}, rows)));
  }

  // Live figures per version over the monitoring window: traffic, latency, live accuracy
  // from feedback labels, and input drift (PSI per feature against the training split).
  function monitoringSection(mon) {
    if (!mon) return [h("h2", {}, "Monitoring"), h("p", { class: "muted" }, "No monitoring figures.")];
    const alert = mon.alert
      ? h("span", { class: "badge s-failed", id: "alert" }, `alert: ${mon.alert}`)
      : h("span", { class: "badge s-succeeded", id: "alert" }, "no alert");
    const rows = mon.models.map((m) => h("tr", {},
      h("td", { class: "mono" }, m.model_id),
      h("td", { class: "num" }, m.share === null ? "–" : `${Math.round(m.share * 100)}%`),
      h("td", { class: "num" }, m.requests),
      h("td", { class: "num" }, m.latency_ms ? `${fmt(m.latency_ms.p50, 3)} / ${fmt(m.latency_ms.p99, 3)}` : "–"),
      h("td", { class: "num" }, m.accuracy === null || m.accuracy === undefined ? "–" : fmt(m.accuracy)),
      h("td", { class: "num" }, m.labelled),
      h("td", {}, badge(m.drift.status))));
    const charts = mon.models
      .filter((m) => Object.keys(m.drift.features || {}).length)
      .map((m) => [h("h3", { class: "small" }, `Drift of ${m.model_id} (PSI per feature)`),
        psiChart(m.drift.features, m.drift.threshold)]);
    return [
      h("h2", {}, "Monitoring ", alert),
      h("p", { class: "muted small" },
        `${mon.logged} logged predictions in a window of ${mon.window}; drift needs ${mon.min_drift_rows}.`),
      h("table", { id: "monitoring" },
        h("thead", {}, h("tr", {}, ["Version", "Share", "Requests", "Latency p50 / p99 ms",
          "Live accuracy", "Labelled", "Drift"].map((c) => h("th", {}, c)))),
        h("tbody", {}, rows)),
      ...charts.flat(),
    ];
  }

  function psiChart(features, threshold) {
    const entries = Object.entries(features).sort((a, b) => (b[1].psi || 0) - (a[1].psi || 0));
    const rowH = 20, left = 150, width = 420;
    const top = Math.max(threshold * 1.5, ...entries.map(([, f]) => f.psi || 0));
    const x = (v) => left + (v / top) * width;
    const chart = svg("svg", { class: "chart psi", width: left + width + 60,
      height: entries.length * rowH + 24, viewBox: `0 0 ${left + width + 60} ${entries.length * rowH + 24}` });
    entries.forEach(([name, f], i) => {
      const y = 4 + i * rowH;
      chart.append(
        svg("text", { x: left - 6, y: y + 13, "text-anchor": "end", class: "label" }, name),
        svg("rect", { x: left, y: y + 2, width: Math.max(1, x(f.psi || 0) - left), height: rowH - 6,
          fill: f.drifted ? "#dc2626" : "#2563eb" }, svg("title", {}, `${name}: PSI ${fmt(f.psi)}`)),
        svg("text", { x: x(f.psi || 0) + 4, y: y + 13 }, fmt(f.psi, 3)));
    });
    const tx = x(threshold);
    chart.append(
      svg("line", { x1: tx, x2: tx, y1: 0, y2: entries.length * rowH + 6, class: "axis", "stroke-dasharray": "4 3" }),
      svg("text", { x: tx, y: entries.length * rowH + 20, "text-anchor": "middle" }, `threshold ${threshold}`));
    return chart;
  }

  // A model's metrics are grouped ({test: evaluation, validation: best trial}); the test
  // figures are the ones to compare versions by, so they come first.
  function metricsText(metrics) {
    const m = metrics || {};
    const pick = (group) => Object.entries(group || {})
      .filter(([k, v]) => typeof v === "number" && !/^num_|threshold/.test(k));
    const rows = m.test || m.validation ? [...pick(m.test).slice(0, 3).map(([k, v]) => [`test ${k}`, v]),
      ...pick(m.validation).slice(0, 1).map(([k, v]) => [`validation ${k}`, v])] : pick(m).slice(0, 4);
    return rows.map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
  }

  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.hash = "#/login";
  });
  window.addEventListener("hashchange", route);
  route();
})();
