/* django-river-ml dashboard: one card per model the signed-in user may read, kept live by the
 * River API's two event streams (stream/events/ and stream/metrics/, Server-Sent Events).
 *
 * The JSON routes are read once for the first paint, and again only when a stream says events
 * were missed (stream-reset, or a stream opened afresh after an error). Nothing is polled.
 *
 * Hooks for tests and tools: every card is article[data-model="NAME"][data-flavor][data-sequence]
 * (data-sequence: the model's log position the card shows, from the metrics stream); its chart is
 * .chart[data-points] (the number of points plotted); its feed is ol[data-feed] with one
 * li[data-event="learn" | ...] per event; #status[data-state] is "live" when both streams are open.
 */
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("river-dashboard-config").textContent);
  const urls = config.urls;
  const FEED_SIZE = config.feedSize || 20;
  const MAX_POINTS = 600;          // points kept per chart (the oldest go first)
  // Seconds the stats' rate_per_second covers. Every call brings new stats (the metrics stream), so once the
  // stats shown are this old, the model had no call for that long: its rate is 0.
  const RATE_WINDOW = 60;
  const PERCENTILES = ["p50", "p95", "p99"];
  const RETRY_FIRST = 1000, RETRY_MAX = 30000;  // ms between attempts to reopen a failed stream
  const EVENT_TYPES = ["learn", "predict", "label", "upload", "delete", "drift", "promote", "rollback", "version",
    "challenger", "withdraw"];
  const OPERATIONS = ["learn", "predict", "label"];
  const PERCENT = /^(Accuracy|Precision|Recall|F1|(Macro|Micro|Weighted)(Precision|Recall|F1))$/;
  const LOWER_IS_BETTER = /^(MAE|RMSE|MSE|SMAPE|LogLoss|CrossEntropy|RMSLE)$/;
  // The metrics each flavor charts; the first is the big number.
  const CHARTED = { regression: ["MAE", "RMSE"], binary: ["Accuracy", "F1"], multiclass: ["Accuracy", "MacroF1"] };
  // A flavor from its metrics, for the first paint (the streams name it).
  const FLAVOR_BY_METRIC = [["MAE", "regression"], ["CrossEntropy", "multiclass"], ["LogLoss", "binary"]];
  const CLASSIFIERS = new Set(["binary", "multiclass"]);
  // Only these models, when the page's URL names some (?model=a&model=b); else every model.
  const narrowed = new URLSearchParams(location.search).getAll("model").filter(Boolean);

  const grid = document.getElementById("models");
  const cards = new Map();          // name -> ModelCard
  const deletedAt = new Map();      // name -> time of its delete event (late events do not bring it back)

  // Helpers ---------------------------------------------------------------------------

  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null) continue;
      if (key === "class") el.className = value; else el.setAttribute(key, value);
    }
    el.append(...children.filter((child) => child !== null && child !== undefined));
    return el;
  }

  const withQuery = (url, params) => {
    const query = new URLSearchParams();
    for (const [key, values] of Object.entries(params)) for (const value of [].concat(values)) query.append(key, value);
    const text = query.toString();
    return text ? `${url}${url.includes("?") ? "&" : "?"}${text}` : url;
  };
  const modelUrl = (name) => urls.model && urls.model.replace(config.modelPlaceholder, encodeURIComponent(name));
  const cssVar = (el, name, fallback) => getComputedStyle(el).getPropertyValue(name).trim() || fallback;

  class HTTPError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store",
      credentials: "same-origin" });
    if (!response.ok) {
      let detail = "";
      try { detail = (await response.json()).message || ""; } catch (_) { /* not JSON */ }
      throw new HTTPError(response.status, `${response.status} ${detail || response.statusText}`.trim());
    }
    return response.json();
  }

  function formatNumber(value) {
    const size = Math.abs(value);
    if (Number.isInteger(value) && size < 1e9) return String(value);
    if (size !== 0 && (size >= 1e5 || size < 1e-3)) return value.toExponential(2);
    return value.toFixed(size >= 100 ? 1 : 3);
  }

  function formatMetric(name, value) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (PERCENT.test(name)) return (value * 100).toFixed(1) + "%";
    return formatNumber(value);
  }

  /** A label, prediction or target, short: 3.142, "spam", true, {a: 0.7, b: 0.3} as "a 70%". */
  function formatValue(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") return formatNumber(value);
    if (typeof value === "string") return value.length > 24 ? value.slice(0, 23) + "…" : value;
    if (typeof value === "boolean") return String(value);
    if (typeof value === "object" && !Array.isArray(value)) {
      const entries = Object.entries(value);
      if (entries.length && entries.every(([, v]) => typeof v === "number")) {  // class probabilities
        const [top, p] = entries.reduce((best, entry) => (entry[1] > best[1] ? entry : best));
        return `${top} ${(p * 100).toFixed(0)}%`;
      }
    }
    const text = JSON.stringify(value);
    return text.length > 32 ? text.slice(0, 31) + "…" : text;
  }

  const formatCount = (n) => Number(n || 0).toLocaleString("en-US");
  /** Nanoseconds, in three figures: "353 µs", "1.89 ms". */
  const formatDuration = (ns) => {
    for (const [unit, size] of [["s", 1e9], ["ms", 1e6], ["µs", 1e3]]) {
      if (ns >= size) return `${Number((ns / size).toPrecision(3))} ${unit}`;
    }
    return `${Math.round(ns)} ns`;
  };
  const formatTime = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
  const now = () => Date.now() / 1000;
  // The server's clock, as its events tell it (charts are in the server's time, whatever the browser's).
  const serverClock = {
    offset: 0,
    heard(time) { if (typeof time === "number") this.offset = time - now(); },
    now() { return now() + this.offset; },
  };

  /** Text for uPlot's legend, which writes labels as HTML. */
  const plain = (text) => String(text).replace(/[<>&"']/g, "");

  /** "#2f6fdf" at opacity a, for the canvas (which may not know color-mix). */
  function translucent(color, a) {
    const hex = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(color);
    return hex ? `rgba(${parseInt(hex[1], 16)}, ${parseInt(hex[2], 16)}, ${parseInt(hex[3], 16)}, ${a})` : undefined;
  }

  // A live chart of one model (uPlot, over time) ------------------------------------------

  // Seconds between two ticks of the time axis (whole seconds: every tick reads hh:mm:ss).
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400];

  /** The time axis spans the data; one point is shown at the end of the minute before it. */
  function timeRange(u, min, max) {
    const xs = u.data && u.data[0];
    if (xs && xs.length === 1) return [xs[0] - 60, xs[0] + 2];
    return [min, max];
  }

  class Chart {
    constructor(card) {
      this.card = card;
      this.el = h("div", { class: "chart", "data-points": "0" });
      this.placeholder = h("div", { class: "chart-empty" }, "waiting for the first learn");
      this.el.append(this.placeholder);
      this.names = [];
      this.data = [[]];
      this.plot = null;
      this.resizer = new ResizeObserver(() => this.plot && this.plot.setSize(this.size()));
      this.resizer.observe(this.el);
    }

    size() { return { width: Math.max(this.el.clientWidth, 200), height: 160 }; }

    /** Chart these series (names; kind "metric" or "count"); a different list starts the chart anew. */
    setSeries(names, kind) {
      if (names.join("\n") === this.names.join("\n") && kind === this.kind) return;
      this.names = names;
      this.kind = kind;
      this.data = [[], ...names.map(() => [])];
      this.provisional = false;
      this.draw();
    }

    /** (Re)make the plot of the current series and data (after a new flavor: its colours). */
    draw() {
      if (this.plot) this.plot.destroy();
      this.plot = null;
      const names = this.names, kind = this.kind;
      if (!names.length || typeof uPlot === "undefined") { this.update(); return; }
      const muted = cssVar(this.card, "--muted", "#6b7385");
      const line = cssVar(this.card, "--line", "#e3e6ec");
      const colors = [cssVar(this.card, "--accent", "#5d6a80"), cssVar(this.card, "--second", "#e08a1e")];
      const percent = names.every((name) => PERCENT.test(name));
      const percentTicks = (u, splits) => {
        const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) * 100 : 1;
        return splits.map((v) => `${(v * 100).toFixed(step >= 1 ? 0 : 1)}%`);
      };
      const axis = { stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 },
        font: "11px system-ui, sans-serif" };
      this.plot = new uPlot({
        ...this.size(),
        padding: [10, 10, 0, 0],
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true, range: timeRange } },
        axes: [
          { ...axis, space: 70, incrs: TIME_STEPS, values: (u, splits) => splits.map(formatTime) },
          { ...axis, size: 56, space: 24, ...(percent ? { values: percentTicks } : {}) },
        ],
        series: [
          { value: (u, v) => (v === null || v === undefined ? "–" : formatTime(v)) },
          ...names.map((name, i) => ({
            label: plain(name), stroke: colors[i % colors.length], width: 2,
            fill: i === 0 ? translucent(colors[0], 0.1) : undefined,
            value: (u, v) => (kind === "metric" ? formatMetric(name, v) : (v === null || v === undefined ? "–" : formatCount(v))),
          })),
        ],
      }, this.data, this.el);
      this.hovering = false;
      this.plot.over.addEventListener("mouseenter", () => { this.hovering = true; });
      this.plot.over.addEventListener("mouseleave", () => {
        this.hovering = false;
        setTimeout(() => this.showNewest(), 0);  // after uPlot clears the legend
      });
      this.update();
    }

    /** The legend's values: the newest point's, when the pointer is not over the chart. */
    showNewest() {
      if (this.plot && !this.hovering && this.points) this.plot.setLegend({ idx: this.points - 1 });
    }

    /** Add the values (by series name) at time t; a provisional point (from the JSON routes, at a
     *  time guessed) gives way to the first point of the streams. Returns whether a point was plotted. */
    push(t, values, provisional = false) {
      if (!this.names.length) return false;
      const xs = this.data[0];
      if (this.provisional && xs.length && t <= xs[xs.length - 1]) this.data.forEach((series) => series.pop());
      this.provisional = provisional;
      if (xs.length && t < xs[xs.length - 1]) return false;  // late (a replay after a reconnect)
      xs.push(t);
      this.names.forEach((name, i) => {
        const value = values[name];
        this.data[i + 1].push(typeof value === "number" && Number.isFinite(value) ? value : null);
      });
      if (xs.length > MAX_POINTS) this.data.forEach((series) => series.splice(0, xs.length - MAX_POINTS));
      this.update();
      return true;
    }

    get points() { return this.data[0].length; }

    update() {
      if (this.plot) this.plot.setData(this.data);
      this.showNewest();
      this.el.dataset.points = String(this.points);
      this.placeholder.hidden = this.points > 0;
      if (!this.names.length) this.placeholder.textContent = "nothing to chart yet";
      else if (!this.points) this.placeholder.textContent = "waiting for the first learn";
    }

    destroy() {
      this.resizer.disconnect();
      if (this.plot) this.plot.destroy();
    }
  }

  // One model -------------------------------------------------------------------------

  class ModelCard {
    constructor(name) {
      this.name = name;
      this.flavor = null;
      this.sequence = null;
      this.stats = null;
      this.statsAt = null;  // when the stats shown arrived (the browser's clock)

      this.el = h("article", { class: "card", "data-model": name });
      this.badge = h("span", { class: "badge" }, "model");
      this.learned = h("span", { class: "learned", title: "the newest entry of the model's learn log" });
      this.drifts = h("span", { class: "drifts", "data-drifts": "", title: "drifts its detector found (docs/lifecycle.md)" });
      this.drifts.hidden = true;
      const link = modelUrl(name) ? h("a", { href: modelUrl(name), target: "_blank", rel: "noopener",
        title: "The model's parameters as JSON" }, "parameters ↗") : null;
      this.el.append(h("div", { class: "card-head" }, h("h2", {}, name), this.badge, this.learned, this.drifts, link));

      this.heroValue = h("span", { class: "hero-value" }, "–");
      this.heroLabel = h("span", { class: "hero-label" });
      this.el.append(h("div", { class: "hero" }, this.heroValue, this.heroLabel));

      this.chart = new Chart(this.el);
      this.metricList = h("dl", { class: "metrics" });
      this.noMetrics = h("div", { class: "no-metrics" }, "This flavor keeps no metrics: the chart counts calls.");
      this.noMetrics.hidden = true;
      this.el.append(this.chart.el, this.metricList, this.noMetrics);

      this.cells = {};
      const rows = OPERATIONS.map((op) => {
        const cells = { n: h("td"), rate: h("td"), mean: h("td"), p50: h("td"), p95: h("td"), p99: h("td") };
        this.cells[op] = cells;
        return h("tr", { "data-operation": op }, h("td", {}, op), ...Object.values(cells));
      });
      this.el.append(h("table", { class: "stats" },
        h("thead", {}, h("tr", {}, h("th", {}, "calls"), h("th", {}, "total"),
          h("th", { title: "calls per second over the last minute, every worker" }, "per s"),
          h("th", { title: "mean duration (hover a value: the recent calls' weighted mean)" }, "mean"),
          ...PERCENTILES.map((p) => h("th", { title: `${p} duration: of every worker's calls` }, p)))),
        h("tbody", {}, ...rows)));

      this.feed = h("ol", { "data-feed": "" });
      this.quiet = h("div", { class: "quiet" }, "No events since the page opened.");
      this.el.append(h("section", { class: "feed" }, h("h3", {}, "Events"), this.quiet, this.feed));
      this.showStats();
    }

    setFlavor(flavor) {
      if (!flavor || flavor === this.flavor) return;
      this.flavor = flavor;
      this.el.dataset.flavor = flavor;
      this.badge.textContent = flavor;
      this.chart.draw();  // in the flavor's colours
    }

    /** The series this model charts: its main metrics, else (no metrics) its call counts. */
    chartedSeries(metrics) {
      const names = Object.keys(metrics).filter((name) => typeof metrics[name] === "number");
      if (!names.length) return { names: ["learn", "predict"], kind: "count" };
      const preferred = (CHARTED[this.flavor] || []).filter((name) => names.includes(name));
      return { names: preferred.length ? preferred : names.slice(0, 2), kind: "metric" };
    }

    /** A state of the model: from a metrics event, or from the JSON routes (snapshot: no sequence). */
    update({ metrics, stats, sequence, time, snapshot = false }) {
      if (!snapshot && sequence !== undefined && sequence !== null) {
        if (this.sequence !== null && sequence < this.sequence) return;  // older than what is shown
        this.sequence = sequence;
        this.learned.textContent = `log #${formatCount(sequence)}`;
        this.el.dataset.sequence = String(sequence);
      }
      if (stats) {
        this.stats = stats;
        this.statsAt = now();
        this.showStats();
        this.showDrifts(stats.drift ? stats.drift.n_calls : 0);
      }
      if (!metrics) return;
      this.showMetrics(metrics);
      const { names, kind } = this.chartedSeries(metrics);
      this.chart.setSeries(names, kind);
      // A snapshot adds a point only to an empty chart (the streams bring the rest); metrics are charted
      // once the model was scored on something (those of a model that learned nothing are all 0).
      if ((snapshot && this.chart.points) || (kind === "metric" && !this.scored())) return;
      const values = kind === "count"
        ? Object.fromEntries(names.map((op) => [op, stats && stats[op] ? stats[op].n_calls : null]))
        : metrics;
      this.chart.push(time, values, snapshot);
    }

    /** How many drifts the model's detector found (a drift event's count, or the stats'). */
    showDrifts(detections) {
      if (typeof detections !== "number" || detections < 1) return;
      this.drifts.hidden = false;
      this.drifts.textContent = `⚠ ${formatCount(detections)} drift${detections === 1 ? "" : "s"}`;
    }

    /** Whether the model learned anything yet (unknown stats: assume so). */
    scored() {
      if (!this.stats) return true;
      return OPERATIONS.some((op) => op !== "predict" && this.stats[op] && this.stats[op].n_calls > 0) ||
        (this.sequence !== null && this.sequence > 0);
    }

    showMetrics(metrics) {
      const names = Object.keys(metrics);
      const main = this.chartedSeries(metrics);
      const shown = (name) => (this.scored() ? formatMetric(name, metrics[name]) : "–");
      this.metricList.hidden = names.length === 0;
      this.noMetrics.hidden = names.length !== 0;
      this.metricList.replaceChildren(...names.map((name) =>
        h("div", {}, h("dt", {}, name), h("dd", {}, shown(name)))));
      if (main.kind === "metric") {
        const name = main.names[0];
        this.heroValue.textContent = shown(name);
        this.heroLabel.textContent = `${name} · ${LOWER_IS_BETTER.test(name) ? "lower" : "higher"} is better`;
      } else {
        this.heroValue.textContent = formatCount(this.stats?.learn?.n_calls);
        this.heroLabel.textContent = "learned";
      }
    }

    /** The operation's calls per second over the last minute, as the server counted them (null: unknown). */
    rate(op) {
      const s = this.stats?.[op];
      if (!s || typeof s.rate_per_second !== "number") return null;
      return now() - this.statsAt >= RATE_WINDOW ? 0 : s.rate_per_second;
    }

    showStats() {
      for (const op of OPERATIONS) {
        const s = this.stats?.[op];
        const cells = this.cells[op];
        cells.n.textContent = s ? formatCount(s.n_calls) : "–";
        const rate = this.rate(op);
        cells.rate.textContent = rate === null ? "–" : rate.toFixed(rate > 0 && rate < 1 ? 2 : 1);
        const called = Boolean(s && s.n_calls);
        cells.mean.textContent = called ? formatDuration(s.mean_duration) : "–";
        cells.mean.title = called ? `the recent calls: ${formatDuration(s.ewm_duration)}` : "";
        for (const p of PERCENTILES) {
          const ns = called ? s[`${p}_duration`] : null;
          cells[p].textContent = typeof ns === "number" && ns > 0 ? formatDuration(ns) : "–";
        }
      }
      if (this.chart.kind === "count") this.heroValue.textContent = formatCount(this.stats?.learn?.n_calls);
    }

    addEvent(type, data) {
      const what = [];
      const truth = (label, prediction) => {
        if (!CLASSIFIERS.has(this.flavor) || prediction === undefined) return null;
        const predicted = prediction !== null && typeof prediction === "object" ? formatValue(prediction).split(" ")[0]
          : prediction;
        const hit = String(predicted) === String(label);
        return h("span", { class: hit ? "hit" : "miss", title: hit ? "predicted right" : "predicted wrong" },
          hit ? " ✓" : " ✗");
      };
      const features = data.features && typeof data.features === "object" ? Object.keys(data.features).length : null;
      if (type === "learn") {
        what.push(`#${data.sequence}`);
        if (data.ground_truth !== null && data.ground_truth !== undefined) what.push(` y ${formatValue(data.ground_truth)}`);
        else if (features !== null) what.push(` · ${features} feature${features === 1 ? "" : "s"}`);  // unsupervised
        if ("prediction" in data) what.push(` ŷ ${formatValue(data.prediction)}`, truth(data.ground_truth, data.prediction));
      } else if (type === "predict") {
        what.push(`ŷ ${formatValue(data.prediction)}`);
        if (data.identifier) what.push(` · ${String(data.identifier).slice(0, 8)}`);
      } else if (type === "label") {
        what.push(`#${data.sequence} y ${formatValue(data.label)} ŷ ${formatValue(data.prediction)}`,
          truth(data.label, data.prediction));
      } else if (type === "upload") {
        what.push(`uploaded as ${data.flavor || "a model"}`);
      } else {  // drift, promote, rollback and events to come: their own fields
        if (type === "drift") this.showDrifts(data.detections);
        const rest = Object.entries(data).filter(([key]) => !["model", "time", "features"].includes(key));
        what.push(rest.map(([key, value]) => `${key} ${formatValue(value)}`).join(" · "));
      }
      const title = data.features ? `features ${JSON.stringify(data.features).slice(0, 600)}` : undefined;
      const item = h("li", { "data-event": type, title },
        h("time", {}, formatTime(data.time || now())), h("span", { class: "kind" }, type),
        h("span", { class: "what" }, ...what.filter(Boolean)));
      this.feed.prepend(item);
      while (this.feed.children.length > FEED_SIZE) this.feed.lastElementChild.remove();
      this.quiet.hidden = true;
    }

    /** The model was uploaded again under its name: a new model, new history. */
    restart(flavor) {
      this.sequence = null;
      this.learned.textContent = "";
      delete this.el.dataset.sequence;
      this.stats = null;
      this.statsAt = null;
      this.chart.setSeries([], "metric");
      this.flavor = null;
      this.setFlavor(flavor);
    }

    destroy() {
      this.chart.destroy();
      this.el.remove();
    }
  }

  // Cards on the page ---------------------------------------------------------------------

  function wanted(name) {
    return !narrowed.length || narrowed.includes(name);
  }

  function placeCard(card) {
    const after = [...cards.keys()].filter((other) => other > card.name).sort()[0];
    grid.insertBefore(card.el, after ? cards.get(after).el : null);
  }

  function ensureCard(name, flavor) {
    let card = cards.get(name);
    if (!card) {
      card = new ModelCard(name);
      cards.set(name, card);
      placeCard(card);
      showCount();
    }
    card.setFlavor(flavor);
    return card;
  }

  function removeCard(name) {
    const card = cards.get(name);
    if (!card) return;
    card.destroy();
    cards.delete(name);
    showCount();
  }

  function showCount() {
    const empty = document.getElementById("empty");
    empty.hidden = cards.size > 0 || !painted;
    document.getElementById("empty-narrowed").hidden = !narrowed.length;
    status.models = cards.size;
    status.show();
  }

  /** A model's metrics and stats from the JSON routes (its first paint, or after missed events). */
  async function loadModel(name) {
    const [metrics, stats] = await Promise.all([
      getJSON(withQuery(urls.metrics, { model: name })), getJSON(withQuery(urls.stats, { model: name }))]);
    const card = cards.get(name);
    if (!card) return;  // deleted meanwhile
    if (!card.flavor) {
      const found = FLAVOR_BY_METRIC.find(([metric]) => metric in metrics);
      if (found) card.setFlavor(found[1]);
    }
    card.update({ metrics, stats, time: serverClock.now(), snapshot: true });
  }

  let painted = false;
  let syncing = null;

  /** Which models there are, and each one's state, from the JSON routes. */
  function resync() {
    if (syncing) return syncing;
    syncing = (async () => {
      try {
        const names = ((await getJSON(urls.models)).models || []).filter(wanted);
        for (const name of [...cards.keys()]) if (!names.includes(name)) removeCard(name);
        for (const name of names) ensureCard(name);
        painted = true;
        showCount();
        await Promise.all(names.map((name) => loadModel(name).catch((error) => {
          if (error.status === 404) removeCard(name);  // gone, or no longer ours to read
        })));
        status.clearProblem("sync");
      } catch (error) {
        status.problem("sync", error);
      } finally {
        syncing = null;
      }
    })();
    return syncing;
  }

  // What the streams say ------------------------------------------------------------------

  function isLate(name, time) {
    const deleted = deletedAt.get(name);
    return deleted !== undefined && (time === undefined || time <= deleted);
  }

  function onMetrics(data) {
    const name = data.model;
    if (!name || !wanted(name) || isLate(name, data.time)) return;
    serverClock.heard(data.time);
    const card = ensureCard(name, data.flavor);
    card.update({ metrics: data.metrics || {}, stats: data.stats, sequence: data.sequence,
      time: data.time || serverClock.now() });
  }

  function onEvent(type, data) {
    const name = data.model;
    if (!name || !wanted(name)) return;
    serverClock.heard(data.time);
    if (type === "delete") {
      deletedAt.set(name, data.time || now());
      removeCard(name);
      return;
    }
    if (type === "upload") {
      deletedAt.delete(name);
      const existing = cards.get(name);
      if (existing) existing.restart(data.flavor);
      const card = ensureCard(name, data.flavor);
      card.addEvent(type, data);
      loadModel(name).catch(() => {});  // its metric names, for the chart
      return;
    }
    if (isLate(name, data.time)) return;
    const known = cards.has(name);
    const card = ensureCard(name);
    card.addEvent(type, data);
    if (!known) loadModel(name).catch(() => {});  // a model we had not heard of (shared meanwhile)
  }

  // Connection status -----------------------------------------------------------------------

  const status = {
    el: document.getElementById("status"),
    text: document.getElementById("status-text"),
    notice: document.getElementById("notice"),
    models: 0,
    streams: {},
    problems: {},

    stream(name, state) { this.streams[name] = state; this.show(); },
    problem(key, error) { this.problems[key] = error; this.show(); },
    clearProblem(key) { delete this.problems[key]; this.show(); },

    show() {
      const states = Object.values(this.streams);
      let state = "connecting";
      if (states.length && states.every((s) => s === "live")) state = "live";
      else if (states.length && states.every((s) => s === "live" || s === "idle")) state = "idle";
      else if (states.some((s) => s === "offline")) state = "offline";
      else if (states.some((s) => s === "reconnecting")) state = "reconnecting";
      this.el.dataset.state = state;
      const count = this.models === 1 ? "1 model" : `${this.models} models`;
      this.text.textContent = {
        live: `live · ${count}`, idle: "no model to follow yet", connecting: "connecting…",
        reconnecting: `reconnecting… · ${count}`,
        offline: `offline · ${count} · retrying`,
      }[state];
      const problem = Object.values(this.problems)[0];
      this.notice.hidden = !problem;
      if (problem) this.notice.replaceChildren(...noticeFor(problem));
    },
  };

  function noticeFor(error) {
    if (error && (error.status === 401 || error.status === 403)) {
      const parts = ["You are not signed in (any more), so the API shows you nothing. "];
      if (config.loginUrl) {
        const login = withQuery(config.loginUrl, { next: location.pathname + location.search });
        parts.push(h("a", { href: login }, "Sign in again"), ".");
      } else {
        parts.push("Sign in to this site, then reload the page.");
      }
      return parts;
    }
    return [`The River API could not be read (${error && error.message ? error.message : error}); `,
      "the page catches up by itself when it answers again."];
  }

  // One event stream, reopened when it fails ------------------------------------------------

  class Stream {
    constructor(name, url, listeners) {
      this.name = name;
      this.url = url;
      this.listeners = listeners;
      this.retry = RETRY_FIRST;
      this.lastId = null;
      this.opened = false; // the first opening: start() reads the JSON routes itself
      this.fresh = true;   // opened without Last-Event-ID: what came before is read from the JSON routes
      this.source = null;
      this.timer = null;
    }

    open() {
      clearTimeout(this.timer);
      const resume = this.lastId && this.lastId !== "error" ? { lastEventId: this.lastId } : {};
      this.fresh = !resume.lastEventId;
      const source = new EventSource(withQuery(this.url, resume), { withCredentials: true });
      this.source = source;
      if (status.streams[this.name] !== "idle") status.stream(this.name, "connecting");
      source.addEventListener("stream-open", () => {
        this.retry = RETRY_FIRST;
        status.stream(this.name, "live");
        status.clearProblem(this.name);
        if (this.fresh && this.opened) resync();  // what happened while it was closed
        this.fresh = false;
        this.opened = true;
      });
      source.addEventListener("stream-reset", (event) => {  // events were missed (beyond what is kept)
        this.remember(event);
        resync();
      });
      source.addEventListener("stream-error", () => {
        // The server ended the stream: "forbidden" when a model it followed was deleted or uploaded
        // again by someone else. An "error" id cannot be resumed: open afresh (its channels anew).
        this.lastId = null;
        this.fail();
      });
      for (const [type, handle] of Object.entries(this.listeners)) {
        source.addEventListener(type, (event) => {
          this.remember(event);
          let data;
          try { data = JSON.parse(event.data); } catch (_) { return; }
          if (data && typeof data === "object") handle(type, data);
        });
      }
      source.onerror = () => {
        if (source !== this.source) return;
        if (source.readyState === EventSource.CONNECTING) {  // the browser reconnects by itself, resuming
          status.stream(this.name, "reconnecting");
        } else {
          this.fail();
        }
      };
    }

    remember(event) {
      if (event.lastEventId) this.lastId = event.lastEventId;
    }

    /** The stream closed for good (an HTTP error, a stream-error): find out why, open it again later.
     *  EventSource does not say why; the model list does: signed out (401), the server down, or no
     *  model to follow yet (a stream of a user's models needs one: it is refused until then). */
    fail() {
      if (this.source) this.source.close();
      this.source = null;
      clearTimeout(this.timer);
      const delay = this.retry;
      this.retry = Math.min(this.retry * 2, RETRY_MAX);
      this.fresh = true;
      status.stream(this.name, "offline");
      getJSON(urls.models).then((answer) => {
        status.clearProblem(this.name);
        if (this.source) return;  // reopened meanwhile
        if (!(answer.models || []).some(wanted)) status.stream(this.name, "idle");
      }, (error) => status.problem(this.name, error));
      this.timer = setTimeout(() => this.open(), delay);
    }
  }

  // Start -------------------------------------------------------------------------------------

  async function showService() {
    if (!urls.info) return;
    try {
      const info = await getJSON(urls.info);
      document.getElementById("service").textContent =
        `river ${info.river_version} · ${info.storage} store · django-river-ml ${info.version}`;
    } catch (_) { /* the header line is a nicety */ }
  }

  function start() {
    if (urls.model) {
      document.getElementById("upload-url").textContent =
        urls.model.replace(`${config.modelPlaceholder}/`, "") + "<flavor>/<name>/";
    }
    if (urls.docs) {
      document.getElementById("docs-link").append(" · ", h("a", { href: urls.docs }, "API docs"));
    }
    showService();
    const models = narrowed.length ? { model: narrowed } : {};
    if (urls.events && urls.metricsStream) {
      const handlers = Object.fromEntries(EVENT_TYPES.map((type) => [type, onEvent]));
      new Stream("events", withQuery(urls.events, models), handlers).open();
      new Stream("metrics", withQuery(urls.metricsStream, models), { metrics: (type, data) => onMetrics(data) }).open();
    } else {
      status.stream("events", "offline");
      status.problem("streams", new Error("this site does not serve the stream routes, so nothing updates live"));
    }
    resync();
    // The "per s" column decays to 0 when calls stop (a local clock, no request).
    setInterval(() => { for (const card of cards.values()) card.showStats(); }, 1000);
  }

  start();
})();
