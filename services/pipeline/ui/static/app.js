// AnsFlow web UI: plain JavaScript, no build step. Pages are rendered on
// the server; this script adds what must happen in the browser: live run
// updates and logs (the API's server-sent events), and the actions, which
// call the REST API with the session's CSRF token.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function csrf() {
    const m = $('meta[name="csrf-token"]');
    return m ? m.content : "";
  }

  // call calls the REST API with the session's CSRF token and answers
  // {ok, status, data}; it never throws for an HTTP error, so a caller
  // can show the API's errors.
  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = csrf();
    if (token) headers["X-CSRF-Token"] = token;
    const resp = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { /* no JSON body */ }
    return { ok: resp.ok, status: resp.status, data };
  }

  // api calls the REST API; it throws an Error with the API's message.
  async function api(method, path, body) {
    const r = await call(method, path, body);
    if (!r.ok) throw new Error((r.data && r.data.error) || String(r.status));
    return r.data;
  }

  // The page's other scripts (the editor) use the same calls.
  window.ansflow = { call, api };

  const terminal = (s) => ["succeeded", "failed", "cancelled", "skipped"].includes(s);

  function setStatus(el, status) {
    if (!el) return;
    el.textContent = status;
    el.className = "status s-" + status;
    el.dataset.status = status;
  }

  // --- frame --------------------------------------------------------
  const logout = $("#logout");
  if (logout) logout.addEventListener("click", async () => {
    try { await api("POST", "/api/v1/logout"); } catch (e) { /* gone already */ }
    location.href = "/login";
  });

  // --- login --------------------------------------------------------
  const loginForm = $("#login");
  if (loginForm) api("GET", "/api/v1/login").then((m) => {
    if (m && m.oidc) {
      $("#oidc-login").href = m.oidc_login_url || "/auth/oidc/login";
      $("#oidc").hidden = false;
    }
  }).catch(() => { /* password login only */ });
  if (loginForm) loginForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(loginForm);
    try {
      await api("POST", "/api/v1/login", { username: f.get("username"), password: f.get("password") });
      location.href = loginForm.dataset.next || "/pipelines";
    } catch (e) {
      $("#login-error").textContent = e.message;
    }
  });
  // A token login sends the token once, in a JSON body (never in the
  // address), and gets the same session cookie a password login does.
  const tokenForm = $("#token-login");
  if (tokenForm) tokenForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = tokenForm.elements.token;
    try {
      await api("POST", "/api/v1/login/token", { token: input.value.trim() });
      input.value = "";
      location.href = tokenForm.dataset.next || "/pipelines";
    } catch (e) {
      $("#token-login-error").textContent = e.message;
    }
  });

  // --- pipelines: search as you type --------------------------------
  const search = $("#pipeline-search");
  if (search && $("#pipelines")) search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    for (const tr of $$("#pipelines tbody tr")) tr.hidden = q !== "" && !tr.dataset.name.toLowerCase().includes(q);
  });

  // --- pipeline: trigger form ---------------------------------------
  const trigger = $("#trigger");
  if (trigger) {
    $("#add-var").addEventListener("click", () => {
      const row = document.createElement("div");
      row.className = "kv";
      row.innerHTML = '<input name="var-key" aria-label="variable name"><input name="var-value" aria-label="value">';
      $("#add-var").before(row);
    });
    trigger.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const field = (name) => trigger.elements[name].value.trim();
      const body = { repo_url: field("repo_url"), branch: field("branch"), tag: field("tag"), commit: field("commit"), vars: {} };
      for (const row of $$(".kv", trigger)) {
        const k = $('[name="var-key"]', row).value.trim();
        const v = $('[name="var-value"]', row).value;
        if (k !== "" && v !== "") body.vars[k] = v;
      }
      try {
        const run = await api("POST", "/api/v1/pipelines/" + encodeURIComponent(trigger.dataset.pipeline) + "/runs", body);
        location.href = "/runs/" + run.id;
      } catch (e) {
        $("#trigger-error").textContent = e.message;
      }
    });
  }

  // --- runs: batch cancel and rerun ---------------------------------
  const pickAll = $("#pick-all");
  if (pickAll) pickAll.addEventListener("change", () => { for (const c of $$(".pick")) c.checked = pickAll.checked; });
  const batch = $("#batch");
  if (batch) for (const b of $$("button", batch)) b.addEventListener("click", async () => {
    const ids = $$(".pick").filter((c) => c.checked).map((c) => c.value);
    const out = $("#batch-result");
    if (ids.length === 0) { out.textContent = "Select runs first."; return; }
    const action = b.dataset.action;
    if (!confirm(action[0].toUpperCase() + action.slice(1) + " " + ids.length + " run(s)?")) return;
    let ok = 0; const failed = [];
    for (const id of ids) {
      try { await api("POST", "/api/v1/runs/" + id + "/" + action); ok++; } catch (e) { failed.push(id.slice(0, 8) + ": " + e.message); }
    }
    out.textContent = action + ": " + ok + " done" + (failed.length ? "; " + failed.join("; ") : "");
    if (ok > 0) setTimeout(() => location.reload(), 800);
  });

  // --- run page -----------------------------------------------------
  const runEl = $("#run");
  if (runEl) runPage(runEl);

  function runPage(root) {
    const id = root.dataset.run;
    for (const b of $$(".actions button[data-action]")) b.addEventListener("click", async () => {
      const action = b.dataset.action;
      if (action === "cancel" && !confirm("Cancel this run?")) return;
      try {
        if (action === "cancel") {
          await api("POST", "/api/v1/runs/" + id + "/cancel");
          return;
        }
        const r = await api("POST", "/api/v1/runs/" + id + "/rerun", { all: action === "rerun-all" });
        location.href = "/runs/" + r.id;
      } catch (e) { $("#action-error").textContent = e.message; }
    });

    const follow = $("#follow");
    const term = $("#log-search");
    const state = {}; // step -> {n, attempt, partial: {stdout, stderr}, text}
    const st = (step) => state[step] || (state[step] = { n: 0, attempt: 0, partial: { stdout: "", stderr: "" }, text: "" });
    let anchored = false;

    function lineMatches(el) {
      const q = term.value.trim().toLowerCase();
      return q === "" || el.textContent.toLowerCase().includes(q);
    }
    term.addEventListener("input", () => { for (const l of $$(".log .line")) l.hidden = !lineMatches(l); });

    function addLine(step, stream, text) {
      const pre = $('pre.log[data-step="' + CSS.escape(step) + '"]');
      if (!pre) return;
      const s = st(step);
      s.n++;
      s.text += text + "\n";
      const line = document.createElement("span");
      line.className = "line " + stream;
      line.id = "L-" + step + "-" + s.n;
      const a = document.createElement("a");
      a.className = "ln";
      a.href = "#" + line.id;
      a.textContent = s.n;
      line.append(a);
      const t = document.createElement("span");
      t.className = "t";
      ansi(text, t);
      line.append(t, "\n");
      line.hidden = !lineMatches(line);
      pre.append(line);
      if (!anchored && location.hash === "#" + line.id) {
        anchored = true;
        line.classList.add("target");
        line.scrollIntoView({ block: "center" });
      } else if (follow.checked && !location.hash.startsWith("#L-")) {
        line.scrollIntoView({ block: "end" });
      }
    }

    function onLog(l) {
      const s = st(l.step);
      if (l.attempt && l.attempt !== s.attempt) {
        if (s.attempt !== 0) addLine(l.step, "marker", "── attempt " + l.attempt + " ──");
        s.attempt = l.attempt;
      }
      const stream = l.stream === "stderr" ? "stderr" : "stdout";
      const parts = (s.partial[stream] + l.text).split("\n");
      s.partial[stream] = parts.pop();
      for (const p of parts) addLine(l.step, stream, p);
    }

    function flush(step) {
      const s = st(step);
      for (const stream of ["stdout", "stderr"]) {
        if (s.partial[stream] !== "") { addLine(step, stream, s.partial[stream]); s.partial[stream] = ""; }
      }
    }

    function onStep(l) {
      // A page opened before the run started learns its start from its
      // first step's.
      if (l.status === "running" && !root.dataset.started && l.time) root.dataset.started = l.time;
      const sec = $('section.step[data-step="' + CSS.escape(l.step) + '"]');
      if (sec) {
        setStatus($(".step-status .status", sec), l.status);
        const err = $(".step-error", sec);
        if (l.error) { err.textContent = l.error; err.hidden = false; }
      }
      const node = $('#graph g.node[data-step="' + CSS.escape(l.step) + '"]');
      if (node) {
        node.setAttribute("class", "node s-" + l.status);
        const label = $("text.label", node);
        if (label) label.textContent = l.status + (l.attempt > 1 ? " · attempt " + l.attempt : "");
      }
      if (terminal(l.status)) flush(l.step);
    }

    function onRun(l) {
      setStatus($("#run-status .status"), l.status);
      root.dataset.status = l.status;
      if (terminal(l.status)) {
        if (root.dataset.started && l.time) {
          $("#run-duration").textContent = formatDuration(new Date(l.time) - new Date(root.dataset.started));
        }
        const c = $("#cancel");
        if (c) c.hidden = true;
        const ra = $("#rerun-all");
        if (ra) ra.hidden = false;
        const rf = $("#rerun");
        if (rf) rf.hidden = l.status === "succeeded";
        for (const step of Object.keys(state)) flush(step);
      }
      if (l.error) { const e = $("#run-error"); e.textContent = l.error; e.hidden = false; }
    }

    let es = null;
    let ended = false;
    function connect() {
      es = new EventSource("/api/v1/runs/" + encodeURIComponent(id) + "/logs");
      es.addEventListener("log", (ev) => onLog(JSON.parse(ev.data)));
      es.addEventListener("step", (ev) => onStep(JSON.parse(ev.data)));
      es.addEventListener("run", (ev) => onRun(JSON.parse(ev.data)));
      es.addEventListener("end", () => { ended = true; es.close(); root.dataset.ended = "true"; for (const step of Object.keys(state)) flush(step); });
      es.onerror = () => {
        es.close();
        if (ended) return;
        // The stream replays the history on a new connection: start over.
        for (const pre of $$("pre.log")) pre.textContent = "";
        for (const k of Object.keys(state)) delete state[k];
        setTimeout(connect, 2000);
      };
    }
    connect();

    for (const b of $$("button.download")) b.addEventListener("click", () => {
      const step = b.dataset.step;
      flush(step);
      const blob = new Blob([st(step).text], { type: "text/plain" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = id.slice(0, 8) + "-" + step + ".log";
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    });
  }

  // formatDuration prints milliseconds as the server does: 850ms, 12.3s,
  // 4m05s, 2h03m.
  function formatDuration(ms) {
    if (!(ms > 0)) return "—";
    if (ms < 1000) return Math.round(ms) + "ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + "s";
    const s = Math.floor(ms / 1000);
    if (ms < 3600000) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  }

  // ansi appends text to el, turning SGR colour codes (ESC [ ... m) into
  // spans with classes; other escape sequences are dropped. Text is only
  // ever set as text, never parsed as HTML.
  function ansi(text, el) {
    const re = /\x1b\[([0-9;]*)([A-Za-z])/g;
    let cls = [];
    let last = 0;
    const put = (s) => {
      if (s === "") return;
      if (cls.length === 0) { el.append(s); return; }
      const span = document.createElement("span");
      span.className = cls.join(" ");
      span.textContent = s;
      el.append(span);
    };
    for (let m; (m = re.exec(text)) !== null;) {
      put(text.slice(last, m.index));
      last = re.lastIndex;
      if (m[2] !== "m") continue;
      for (const code of (m[1] === "" ? ["0"] : m[1].split(";"))) {
        const n = parseInt(code, 10);
        if (n === 0) cls = [];
        else if (n === 1) cls.push("ansi-bold");
        else if ((n >= 30 && n <= 37) || (n >= 90 && n <= 97)) { cls = cls.filter((c) => !c.startsWith("ansi-fg")); cls.push("ansi-fg-" + n); }
        else if ((n >= 40 && n <= 47) || (n >= 100 && n <= 107)) { cls = cls.filter((c) => !c.startsWith("ansi-bg")); cls.push("ansi-bg-" + n); }
        else if (n === 39) cls = cls.filter((c) => !c.startsWith("ansi-fg"));
        else if (n === 49) cls = cls.filter((c) => !c.startsWith("ansi-bg"));
      }
    }
    put(text.slice(last).replace(/\x1b/g, ""));
  }
})();

// --- audit trail: records and verification from the audit API ---------
(function () {
  "use strict";
  const table = document.querySelector("#audit");
  if (!table) return;
  const get = async (path) => {
    const r = await window.ansflow.call("GET", path);
    if (r.status === 404) throw new Error("the audit trail is not served by this pipeline service (query the audit service's own API)");
    if (!r.ok) throw new Error((r.data && r.data.error) || String(r.status));
    return r.data;
  };
  const state = document.querySelector("#audit-state");
  const more = document.querySelector("#audit-more");
  let cursor = "";
  const cell = (tr, text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.append(td); return td; };
  async function load() {
    const q = new URLSearchParams({ limit: "100" });
    for (const k of ["pipeline", "run", "type"]) if (table.dataset[k]) q.set(k, table.dataset[k]);
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await get("/api/v1/audit?" + q.toString());
      const body = table.querySelector("tbody");
      for (const r of page.records || []) {
        const tr = document.createElement("tr");
        tr.dataset.seq = r.seq;
        cell(tr, String(r.seq));
        cell(tr, r.time ? new Date(r.time).toISOString().replace("T", " ").slice(0, 19) : "");
        cell(tr, (r.rejected ? "rejected: " : "") + r.type);
        cell(tr, r.pipeline || "");
        const runTd = cell(tr, "");
        if (r.run_id) { const a = document.createElement("a"); a.href = "/runs/" + encodeURIComponent(r.run_id); a.textContent = r.run_id.slice(0, 8); runTd.append(a); }
        cell(tr, r.actor || "");
        cell(tr, r.reason || (r.data ? JSON.stringify(r.data).slice(0, 160) : ""), "detail");
        body.append(tr);
      }
      cursor = page.next_cursor || "";
      more.hidden = cursor === "";
      state.textContent = body.children.length + " records" + (cursor ? " (more below)" : "");
    } catch (e) {
      state.textContent = e.message;
    }
  }
  more.addEventListener("click", load);
  load();
  const verify = document.querySelector("#verify");
  if (verify) verify.addEventListener("click", async () => {
    const out = document.querySelector("#verify-result");
    out.textContent = "verifying…";
    try {
      const v = await get("/api/v1/audit/verify");
      out.textContent = v.ok ? "✓ chain intact: " + v.records + " records, head " + (v.head_hash || "").slice(0, 16)
        : "✗ chain broken at record " + (v.first_bad ? v.first_bad.seq : "?");
      out.dataset.ok = String(v.ok);
    } catch (e) { out.textContent = e.message; }
  });
})();
