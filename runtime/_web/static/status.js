// The status page: polls /status/data (and /status/device/<id> while a device is open)
// every refresh_s the runtime names. Every value from the runtime reaches the DOM as text
// (textContent, append of strings), never as markup. The token, when the runtime needs one,
// lives in this tab's sessionStorage and travels only in the X-PiPhi-Integration-Token header.
"use strict";

(() => {
  const TOKEN_KEY = "piphi.status.token";
  const TOKEN_HEADER = "X-PiPhi-Integration-Token";
  const STATES = ["running", "unavailable", "backoff", "failed", "starting", "stopping", "stopped"];
  const view = { offset: 0, limit: 100, state: "", q: "", selected: null };
  let refreshMs = 1000;
  let timer = null;
  let sequence = 0;
  let lastOk = 0;
  let serverNow = Date.now();

  class AuthNeeded extends Error {}
  class NotFound extends Error {}

  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // -- the token ----------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function askToken(message) {
    clearTimeout(timer);
    $("main").hidden = true;
    $("detail").hidden = true;
    $("auth").hidden = false;
    $("forget").hidden = true;
    const error = $("auth-error");
    error.hidden = !message;
    error.textContent = message || "";
    setLive("needs the integration token", "error");
    $("auth-token").focus();
  }

  function onToken(event) {
    event.preventDefault(); // never a form submission: the token must not reach a URL
    const input = $("auth-token");
    const value = input.value.trim();
    input.value = "";
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("auth").hidden = true;
    refresh();
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken(null);
  }

  // -- talking to the runtime --------------------------------------------------------------

  async function api(path) {
    const headers = { Accept: "application/json" };
    const stored = token();
    if (stored) headers[TOKEN_HEADER] = stored;
    const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    if (response.status === 401) throw new AuthNeeded();
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 404 && body && body.code === "unknown_device") throw new NotFound();
    if (!response.ok) {
      const detail = body && (body.detail || body.title);
      throw new Error(detail ? `${response.status}: ${detail}` : `HTTP ${response.status}`);
    }
    return body;
  }

  function dataPath() {
    const query = new URLSearchParams({ offset: String(view.offset), limit: String(view.limit) });
    if (view.state) query.set("state", view.state);
    if (view.q) query.set("q", view.q);
    return `/status/data?${query}`;
  }

  async function refresh() {
    clearTimeout(timer);
    const mine = ++sequence;
    if (document.hidden) {
      timer = setTimeout(refresh, refreshMs);
      return;
    }
    const selected = view.selected;
    const detail = selected
      ? api(`/status/device/${encodeURIComponent(selected)}`).catch((error) => error)
      : null;
    try {
      const data = await api(dataPath());
      if (mine !== sequence) return; // a newer request (a filter changed) owns the page
      refreshMs = Math.max(250, (data.refresh_s || 1) * 1000);
      serverNow = Date.parse(data.generated_at) || Date.now();
      lastOk = Date.now();
      $("main").hidden = false;
      $("forget").hidden = !token();
      renderSummary(data.summary);
      renderFilters(data.summary.by_state, data.summary.runtime.devices);
      renderRows(data.rows, data.page);
      if (detail) renderDetailResult(selected, await detail);
      setLive("live", "ok");
    } catch (error) {
      if (mine !== sequence) return;
      if (error instanceof AuthNeeded) {
        const had = token();
        sessionStorage.removeItem(TOKEN_KEY);
        askToken(had ? "The runtime refused this token." : null);
        return;
      }
      setLive(`runtime unreachable (${error.message}); retrying`, "error");
    }
    if (mine === sequence) timer = setTimeout(refresh, refreshMs);
  }

  function setLive(text, kind) {
    const live = document.querySelector(".live");
    live.classList.toggle("stale", kind === "error");
    $("updated").textContent = kind === "ok" ? `live · updated ${clock(new Date())}` : text;
  }

  // -- formatting ---------------------------------------------------------------------

  function clock(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 0.01) return `${(seconds * 1000).toFixed(1)} ms`;
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
    return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
  }

  function ago(iso) {
    if (!iso) return "never";
    const then = Date.parse(iso);
    if (Number.isNaN(then)) return "–";
    return `${duration(Math.max(0, (serverNow - then) / 1000))} ago`;
  }

  function count(n) {
    return typeof n === "number" ? n.toLocaleString() : "–";
  }

  function pill(text, kind) {
    return el("span", { class: `pill ${kind || text}` }, text);
  }

  function figures(target, pairs) {
    target.replaceChildren();
    for (const [label, value, bad] of pairs) {
      target.append(el("dt", null, label), el("dd", { class: bad ? "bad" : "" }, value));
    }
  }

  // -- the summary --------------------------------------------------------------------------

  function renderSummary(summary) {
    const info = summary.integration;
    $("title").textContent = info.name;
    $("version").textContent = `${info.id} ${info.version} · ${summary.mode} mode`;
    document.title = `${info.name} · status`;
    const overall = $("overall");
    overall.textContent = summary.status;
    overall.className = `pill ${summary.status}`;
    renderLink(summary.runtime.core_link);
    const d = summary.delivery;
    figures($("delivery"), [
      ["Queue", count(d.queue_depth)],
      ["Spool", count(d.spool_depth)],
      ["Oldest spooled", d.spool_oldest_age === null ? "–" : duration(d.spool_oldest_age)],
      ["Delivered", count(d.delivered)],
      ["Dropped", count(d.dropped), d.dropped > 0],
      ["Rejected", count(d.rejected), d.rejected > 0],
      ["Retried", count(d.retried)],
      ["In flight", count(d.in_flight)],
    ]);
    const r = summary.runtime;
    figures($("fleet"), [
      ["Devices", count(r.devices)],
      ["Running", count(summary.by_state.running || 0)],
      ["Not running", count(r.devices - (summary.by_state.running || 0)), r.devices > (summary.by_state.running || 0)],
      ["Failed", count(r.failed_devices), r.failed_devices > 0],
      ["Generation", r.generation === null ? "–" : String(r.generation)],
      ["Up for", duration(r.uptime_s)],
    ]);
    $("concerns").replaceChildren(...r.concerns.map((c) => el("li", { title: c.hint }, c.message)));
    renderRehydration(summary.rehydration);
  }

  function renderLink(link) {
    const state = $("core-state");
    state.textContent = link.state.replace("_", " ");
    state.className = `pill ${link.state}`;
    $("core-since").textContent = `since ${ago(link.since).replace(" ago", "")}`;
    const error = link.last_error;
    const show = error && link.state !== "up";
    $("core-error").hidden = !show;
    $("core-hint").hidden = !show;
    if (show) {
      $("core-error").textContent = `${error.code}: ${error.message} (${ago(error.at)})`;
      $("core-hint").textContent = error.hint;
    }
  }

  function renderRehydration(report) {
    const ok = $("rehydration-ok");
    const list = $("rehydration");
    if (!report) {
      ok.replaceChildren(pill("not run", "stopped"));
      list.replaceChildren();
      return;
    }
    ok.replaceChildren(report.ok ? pill("ok") : pill("corrupt source", "failed"));
    list.replaceChildren(
      ...report.sources.map((s) =>
        el(
          "li",
          null,
          `${s.source.replace("_", " ")}: ${s.status.replace("_", " ")}`,
          s.configs ? ` (${s.configs} configs)` : "",
          s.detail ? el("span", { class: "sub muted" }, ` ${s.detail}`) : null,
        ),
      ),
    );
  }

  // -- filters, rows, pages ------------------------------------------------------------------

  function renderFilters(byState, total) {
    const shown = STATES.filter((s) => byState[s] || view.state === s);
    const buttons = [["", `All ${count(total)}`], ...shown.map((s) => [s, `${s} ${count(byState[s] || 0)}`])];
    const box = $("filters");
    const focused = box.contains(document.activeElement) ? document.activeElement.getAttribute("data-state") : null;
    box.replaceChildren(
      ...buttons.map(([state, label]) =>
        el("button", { type: "button", "data-state": state, "aria-pressed": String(view.state === state) }, label),
      ),
    );
    if (focused !== null) {
      const again = box.querySelector(`button[data-state="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function onFilter(event) {
    const button = event.target.closest("button[data-state]");
    if (!button) return;
    view.state = button.getAttribute("data-state");
    view.offset = 0;
    refresh();
  }

  const COLUMNS = ["Device", "Actor", "State", "Restarts", "Last error", "Poll", "Late", "Last data"];

  function cell(index, props, ...children) {
    return el("td", { ...props, "data-label": COLUMNS[index] }, ...children);
  }

  function stateCell(row) {
    const parts = [pill(row.state)];
    if (row.reason) parts.push(el("span", { class: "sub" }, `unavailable: ${row.reason}`));
    else if (!row.available && row.state !== "unavailable") parts.push(el("span", { class: "sub" }, "unavailable"));
    parts.push(el("span", { class: "sub" }, `for ${ago(row.since).replace(" ago", "")}`));
    return parts;
  }

  function errorCell(error) {
    if (!error) return ["–"];
    return [
      el("span", { class: "mono" }, error.code), `: ${error.message}`,
      el("span", { class: "sub" }, `${error.phase} · ${ago(error.at)}`),
      el("p", { class: "hint" }, error.hint),
    ];
  }

  function renderRows(rows, page) {
    const focused = document.activeElement && document.activeElement.getAttribute("data-config-id");
    const body = $("rows");
    body.replaceChildren(
      ...rows.map((row) => {
        const tr = el("tr", {
          tabIndex: 0,
          "data-config-id": row.config_id,
          "data-state": row.state,
          "data-available": String(row.available),
          class: row.config_id === view.selected ? "selected" : "",
        },
          cell(0, { class: "device" }, row.device_id, row.config_id !== row.device_id ? el("span", { class: "sub" }, row.config_id) : null),
          cell(1, null, row.actor),
          cell(2, { class: "state" }, ...stateCell(row)),
          cell(3, { class: "num" }, count(row.restarts)),
          cell(4, { class: row.error ? "err" : "empty-cell" }, ...errorCell(row.error)),
          cell(5, { class: "num", title: `p95 ${duration(row.poll_p95_s)}` }, duration(row.poll_s)),
          cell(6, { class: "num" }, row.late_s === null ? "–" : duration(row.late_s)),
          cell(7, null, ago(row.last_data)),
        );
        return tr;
      }),
    );
    if (focused) {
      const again = body.querySelector(`tr[data-config-id="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
    $("empty").hidden = rows.length > 0;
    const first = page.matched ? page.offset + 1 : 0;
    $("range").textContent = `${count(first)}–${count(page.offset + rows.length)} of ${count(page.matched)}`;
    $("prev").disabled = page.offset === 0;
    $("next").disabled = page.next_offset === null;
  }

  function onRow(event) {
    if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
    const tr = event.target.closest("tr[data-config-id]");
    if (!tr) return;
    event.preventDefault();
    openDetail(tr.getAttribute("data-config-id"));
  }

  // -- one device ---------------------------------------------------------------------------

  function openDetail(configId) {
    view.selected = configId;
    $("detail-title").textContent = configId;
    $("detail-body").replaceChildren(el("p", { class: "muted" }, "loading…"));
    $("detail").hidden = false;
    refresh();
  }

  function closeDetail() {
    view.selected = null;
    $("detail").hidden = true;
    for (const tr of document.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  }

  function renderDetailResult(configId, result) {
    if (view.selected !== configId) return;
    if (result instanceof NotFound) {
      $("detail-body").replaceChildren(el("p", { class: "muted" }, "This device is no longer configured."));
      return;
    }
    if (result instanceof Error) throw result;
    renderDetail(result);
  }

  function section(title, ...content) {
    return el("section", null, el("h2", null, title), ...content);
  }

  function kv(pairs) {
    return el("table", { class: "kv" }, el("tbody", null, ...pairs.map(([k, v]) => el("tr", null, el("td", null, k), el("td", null, v)))));
  }

  function value(v) {
    return typeof v === "string" ? v : JSON.stringify(v);
  }

  function table(headings, rows) {
    return el(
      "table",
      null,
      el("thead", null, el("tr", null, ...headings.map((h) => el("th", null, h)))),
      el("tbody", null, ...rows.map((cells) => el("tr", null, ...cells.map((c) => el("td", null, c))))),
    );
  }

  function renderDetail(d) {
    const row = d.row;
    const f = d.figures;
    $("detail-title").textContent = row.device_id === row.config_id ? row.device_id : `${row.device_id} (${row.config_id})`;
    const parts = [
      section("Health", kv([
        ["State", el("span", null, pill(row.state), ` for ${ago(row.since).replace(" ago", "")}`)],
        ["Available", row.available ? "yes" : `no${row.reason ? ` (${row.reason})` : ""}`],
        ["Actor", row.actor],
        ["Restarts", `${count(row.restarts)} (${count(f.restarts_in_window)} recently, ${count(f.consecutive_failures)} failures in a row)`],
        ["Polls", `${count(f.polls)} · ${count(row.overruns)} overruns · ${count(f.readings)} readings`],
        ["Poll duration", `last ${duration(row.poll_s)} · p50 ${duration(f.poll_p50_s)} · p95 ${duration(row.poll_p95_s)}`],
        ["Late", row.late_s === null ? "–" : duration(row.late_s)],
        ["Next poll", f.next_poll_due ? clock(new Date(f.next_poll_due)) : "–"],
        ["Last data", ago(row.last_data)],
        ["Delivered", `${count(d.delivery.delivered)} of ${count(d.delivery.accepted)} · last ${ago(d.delivery.last_delivered)}`],
      ])),
    ];
    if (row.error) {
      const e = row.error;
      parts.push(section("Last error", kv([
        ["Code", el("span", { class: "mono" }, e.code)],
        ["Message", e.message],
        ["Hint", e.hint],
        ["Where", `${e.phase}() · ${e.type}`],
        ["When", ago(e.at)],
      ])));
    }
    const state = Object.entries(d.latest_state);
    parts.push(section("Latest state", state.length
      ? kv(state.map(([k, v]) => [k, value(v)]))
      : el("p", { class: "muted" }, "Nothing reported yet."),
      d.state_updated ? el("p", { class: "muted" }, `published ${ago(d.state_updated)}`) : null));
    if (d.readings.length) {
      parts.push(section("Readings", table(["Metric", "Value", "Unit"], d.readings.map((r) => [r.metric, value(r.value), r.unit || ""]))));
    }
    if (d.children.length) {
      parts.push(section("Children", table(["Device", "Available", "Last data"], d.children.map((c) => [c.device_id, c.available ? "yes" : "no", ago(c.last_data)]))));
    }
    parts.push(section("Health history", d.history.length
      ? table(["When", "State", "Why", "Restarts"], d.history.map((h) => [
        clock(new Date(h.at)), h.state, h.available ? (h.error || "") : [h.reason || "unavailable", h.error].filter(Boolean).join(": "), count(h.restarts),
      ]))
      : el("p", { class: "muted" }, "No change seen yet.")));
    parts.push(section("Recent events", d.events.length
      ? table(["When", "Event", "Data"], d.events.map((e) => [clock(new Date(e.at)), `${e.event_type} (${e.severity})`, el("pre", null, JSON.stringify(e.data))]))
      : el("p", { class: "muted" }, "None.")));
    parts.push(section("Config", el("pre", null, JSON.stringify(d.config, null, 2))));
    $("detail-body").replaceChildren(...parts);
    for (const tr of document.querySelectorAll("tr[data-config-id]")) {
      tr.classList.toggle("selected", tr.getAttribute("data-config-id") === row.config_id);
    }
  }

  // -- start ---------------------------------------------------------------------------------

  let searchTimer = null;

  function onSearch() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      view.q = $("search").value.trim();
      view.offset = 0;
      refresh();
    }, 250);
  }

  function bind() {
    $("auth-form").addEventListener("submit", onToken);
    $("forget").addEventListener("click", forgetToken);
    $("filters").addEventListener("click", onFilter);
    $("search").addEventListener("input", onSearch);
    $("rows").addEventListener("click", onRow);
    $("rows").addEventListener("keydown", onRow);
    $("detail-close").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && view.selected) closeDetail();
    });
    $("prev").addEventListener("click", () => {
      view.offset = Math.max(0, view.offset - view.limit);
      refresh();
    });
    $("next").addEventListener("click", () => {
      view.offset += view.limit;
      refresh();
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && $("auth").hidden) refresh();
    });
    setInterval(() => {
      if (lastOk && Date.now() - lastOk > 3 * refreshMs && $("auth").hidden) {
        setLive(`no answer for ${duration((Date.now() - lastOk) / 1000)}; retrying`, "error");
      }
    }, 1000);
  }

  async function managed() {
    // /health is open and says whether this runtime is managed, so the page can ask for
    // the token before its first data request rather than after a refused one.
    try {
      const response = await fetch("/health", { cache: "no-store", credentials: "omit" });
      const body = await response.json();
      return Boolean(body && body.metadata && body.metadata.managed);
    } catch (_) {
      return false; // not known yet: the data request will say (401)
    }
  }

  async function start() {
    bind();
    if (!token() && (await managed())) {
      askToken(null);
      return;
    }
    refresh();
  }

  start();
})();
