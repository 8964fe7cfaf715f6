// AnsFlow pipeline editor: plain JavaScript, no build step, loaded by the
// editor page only.
//
// The editor keeps one model, the JSON of the pipeline (spec.Pipeline, as
// POST /api/v1/validate answers it), and two views of it:
//
//   - form → YAML: every change in the form updates the model and rewrites
//     the YAML from it with the small emitter below (keys in the order of
//     the spec and of the step-type definitions; comments are not kept);
//   - YAML → form: typing in the YAML sends it to POST /api/v1/validate
//     (debounced); when it is valid, the server's parse of it becomes the
//     model and the form is drawn again. JavaScript never parses YAML.
//
// Every validation's errors are shown at their lines (a mark in the
// gutter and a list whose items jump to the line). Saving applies the
// YAML with POST /api/v1/pipelines (new) or PUT /api/v1/pipelines/{name}.
"use strict";
(function () {
  const root = document.getElementById("editor");
  if (!root) return;
  const $ = (sel, r) => (r || document).querySelector(sel);

  // call is app.js's: the REST API with the session's CSRF token,
  // answering {ok, status, data}.
  const call = window.ansflow.call;

  // el makes an element with attributes and children (text is set as
  // text, never parsed as HTML).
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (v === true) e.setAttribute(k, "");
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }

  // ---- YAML emitter ------------------------------------------------
  // It writes the subset the spec uses: mappings, lists, strings, numbers
  // and booleans, block style, two-space indents. A string is plain when
  // YAML would read it back as the same string, else double-quoted (JSON
  // escapes are YAML's); a string with line breaks is a literal block.

  const reserved = /^(true|false|yes|no|on|off|y|n|null|~)$/i;
  const numberLike = /^[-+]?(\.?[0-9][0-9_:.eE+-]*|\.(inf|nan))$|^0[xo]/i;
  const plainRE = /^[A-Za-z0-9_./$][A-Za-z0-9_./$ :@+=,()<>^*%-]*$/;

  function plain(s) {
    return s !== "" && plainRE.test(s) && !reserved.test(s) && !numberLike.test(s) &&
      !s.endsWith(" ") && !s.endsWith(":") && !s.includes(": ") && !s.includes(" #");
  }

  function scalar(v) {
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    if (v === null || v === undefined) return "null";
    const s = String(v);
    return plain(s) ? s : JSON.stringify(s);
  }

  const isEmpty = (v) => (Array.isArray(v) ? v.length === 0 : v && typeof v === "object" ? Object.keys(v).length === 0 : false);
  const isBlock = (v) => v !== null && typeof v === "object" && !isEmpty(v);

  // node returns {head, lines}: head is what follows "key:" or "-" on the
  // same line, lines the block below it (not yet indented).
  function node(v, shape) {
    if (typeof v === "string" && v.includes("\n") && !/^[ \n]/.test(v) && !/[ \t]$/m.test(v)) {
      const body = v.endsWith("\n") ? v.slice(0, -1) : v;
      return { head: v.endsWith("\n") ? "|" : "|-", lines: body.split("\n") };
    }
    if (Array.isArray(v)) {
      if (v.length === 0) return { head: "[]", lines: [] };
      const lines = [];
      const itemShape = shape && shape.items;
      for (const item of v) {
        const n = node(item, typeof itemShape === "function" ? itemShape(item) : itemShape);
        if (isBlock(item) && !Array.isArray(item)) {
          n.lines.forEach((l, i) => lines.push((i === 0 ? "- " : "  ") + l));
        } else if (n.lines.length > 0) {
          lines.push("-" + (n.head ? " " + n.head : ""));
          for (const l of n.lines) lines.push("  " + l);
        } else {
          lines.push("- " + n.head);
        }
      }
      return { head: "", lines };
    }
    if (v !== null && typeof v === "object") {
      if (isEmpty(v)) return { head: "{}", lines: [] };
      const lines = [];
      for (const k of orderedKeys(v, shape && shape.keys)) {
        const child = shape && shape.children ? shape.children[k] : undefined;
        const n = node(v[k], typeof child === "function" ? child(v[k]) : child);
        lines.push(scalar(k) + ":" + (n.head ? " " + n.head : ""));
        for (const l of n.lines) lines.push("  " + l);
      }
      return { head: "", lines };
    }
    return { head: scalar(v), lines: [] };
  }

  // orderedKeys lists obj's keys: those of order first, in its order,
  // then the others as they come (a key the definitions do not know is
  // kept, for validation to report).
  function orderedKeys(obj, order) {
    const keys = Object.keys(obj).filter((k) => obj[k] !== undefined);
    if (!order) return keys;
    const known = order.filter((k) => keys.includes(k));
    return known.concat(keys.filter((k) => !order.includes(k)));
  }

  // The key orders of the spec (pkg/spec: Pipeline, Step and friends).
  const pipelineKeys = ["name", "description", "execution_mode", "variables", "timeout", "concurrency", "cancel_previous", "repository", "from_repository", "pipeline_file", "triggers", "notify", "status", "steps"];
  const stepKeys = ["name", "type", "order", "needs", "runs_on", "docker_image", "docker_tag", "docker_registry", "docker_config",
    "k8s_cluster", "k8s_namespace", "k8s_resource_name", "k8s_config", "command", "conditions", "when", "timeout", "retry_policy",
    "continue_on_failure", "secrets"];
  const retryKeys = ["max_retries", "retry_delay_seconds", "backoff", "continue_on_failure"];
  const conditionKeys = ["type", "value", "name"];
  const triggerKeys = ["type", "provider", "secret", "secret_env", "events", "branches", "tags", "paths", "pull_request", "schedule", "branch"];
  const pullRequestKeys = ["actions", "forks"];
  const secretRefKeys = ["name", "env"];

  // fieldShape is the emitter's key order of a definition's field.
  function fieldShape(f) {
    if (!f) return undefined;
    if (f.type === "object") {
      const children = {};
      for (const c of f.fields || []) children[c.key] = fieldShape(c);
      return { keys: (f.fields || []).map((c) => c.key), children };
    }
    if (f.type === "list" || f.type === "map") return { items: fieldShape(f.items) };
    return undefined;
  }

  let types = []; // GET /api/v1/step-types
  const typeOf = (name) => types.find((t) => t.name === name);

  function stepShape(step) {
    const children = { retry_policy: { keys: retryKeys }, conditions: { items: { keys: conditionKeys } }, secrets: { items: { keys: secretRefKeys } } };
    const t = step && typeOf(step.type);
    if (t) children[t.config_key] = fieldShape({ type: "object", fields: t.fields });
    return { keys: stepKeys, children };
  }

  // emit writes the model as a pipeline file.
  function emit(p) {
    const n = node({ pipeline: p }, { keys: ["pipeline"], children: { pipeline: { keys: pipelineKeys, children: {
      triggers: { items: { keys: triggerKeys, children: { pull_request: { keys: pullRequestKeys } } } },
      steps: { items: stepShape } } } } });
    return n.lines.join("\n") + "\n";
  }

  // ---- state -------------------------------------------------------
  const ta = $("#yaml");
  const gutter = $("#gutter");
  const form = $("#form");
  const problems = $("#problems");
  const stateEl = $("#ed-state");
  const name = root.dataset.name;
  let model = { name: "", steps: [] };
  let errorLines = new Set();
  let seq = 0; // validations sent; only the latest answer counts
  let timer = null;
  let registries = [], clusters = [], pools = [];
  let uid = 0;
  // dirty is set by every change not yet saved; leaving the page then
  // asks first.
  let dirty = false;
  window.addEventListener("beforeunload", (ev) => {
    if (!dirty) return;
    ev.preventDefault();
    ev.returnValue = "";
  });
  const nextID = (base) => "f" + (++uid) + "-" + String(base).replace(/[^A-Za-z0-9_-]/g, "-");

  // ---- YAML pane: gutter, problems, validation ---------------------
  function drawGutter() {
    const n = ta.value.split("\n").length;
    const frag = document.createDocumentFragment();
    for (let i = 1; i <= n; i++) {
      const err = errorLines.has(i);
      frag.append(el("span", { class: err ? "err" : null, "data-line": i, text: (err ? "! " : "") + i }));
    }
    gutter.replaceChildren(frag);
    gutter.scrollTop = ta.scrollTop;
  }
  ta.addEventListener("scroll", () => { gutter.scrollTop = ta.scrollTop; });

  // jump selects line n of the YAML and scrolls it into view.
  function jump(n) {
    const lines = ta.value.split("\n");
    let start = 0;
    for (let i = 0; i < n - 1 && i < lines.length; i++) start += lines[i].length + 1;
    const end = start + (lines[n - 1] || "").length;
    ta.focus();
    ta.setSelectionRange(start, end);
    const lh = parseFloat(getComputedStyle(ta).lineHeight) || 18;
    ta.scrollTop = Math.max(0, (n - 1) * lh - ta.clientHeight / 2);
    gutter.scrollTop = ta.scrollTop;
  }

  // showProblems lists the API's errors ({line, field, message}) and marks
  // their lines.
  function showProblems(errs) {
    errorLines = new Set(errs.filter((e) => e.line).map((e) => e.line));
    problems.replaceChildren(...errs.map((e) => {
      const text = (e.line ? "line " + e.line + ": " : "") + (e.field ? e.field + ": " : "") + e.message;
      if (!e.line) return el("li", {}, text);
      const b = el("button", { type: "button", class: "link", "data-line": e.line, text });
      b.addEventListener("click", () => jump(e.line));
      return el("li", {}, b);
    }));
    drawGutter();
    ta.setAttribute("aria-invalid", errs.length > 0 ? "true" : "false");
    // A form locked or waiting for typed YAML shows another version than
    // the errors' paths speak of.
    markFields(form.disabled ? [] : errs);
  }

  // markFields shows each error at its control in the form too: the
  // control of its field, or of the nearest enclosing one, is marked
  // aria-invalid and described by the message.
  function markFields(errs) {
    for (const m of form.querySelectorAll(".field-error")) m.remove();
    for (const c of form.querySelectorAll("[data-error-for]")) {
      c.removeAttribute("aria-invalid");
      const mine = c.dataset.errorFor.split(" ");
      const ids = (c.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && !mine.includes(x));
      if (ids.length) c.setAttribute("aria-describedby", ids.join(" ")); else c.removeAttribute("aria-describedby");
      delete c.dataset.errorFor;
    }
    // parent is the path of the field enclosing path's ("" at the top).
    const parent = (path) => {
      const up = path.replace(/(\.[^.[]*|\[\d+\])$/, "");
      return up === path ? "" : up;
    };
    for (const e of errs) {
      let p = e.field || "";
      let target = null;
      while (p && !(target = form.querySelector('[data-path="' + CSS.escape(p) + '"]'))) p = parent(p);
      if (!target) continue;
      const id = nextID("error");
      const msg = el("small", { class: "field-error", id, text: (p === e.field ? "" : e.field.slice(p.length).replace(/^\./, "") + ": ") + e.message });
      const head = target.matches("fieldset, .steps") ? target.querySelector(":scope > legend, :scope > h3") : null;
      if (head) head.after(msg);
      else (target.closest(".field") || target.parentNode).append(msg);
      target.setAttribute("aria-invalid", "true");
      target.setAttribute("aria-describedby", ((target.getAttribute("aria-describedby") || "") + " " + id).trim());
      target.dataset.errorFor = ((target.dataset.errorFor || "") + " " + id).trim();
    }
  }

  function schedule(from) {
    clearTimeout(timer);
    stateEl.textContent = "Checking…";
    timer = setTimeout(() => validate(from), 350);
  }

  // validate asks the API to parse the YAML. from is "yaml" when the user
  // typed it: then a valid answer redraws the form, an invalid one locks
  // it (it would otherwise overwrite the YAML being fixed).
  async function validate(from) {
    const mine = ++seq;
    let r;
    try {
      r = await call("POST", "/api/v1/validate", { yaml: ta.value, file: (name || "pipeline") + ".yaml" });
    } catch (e) {
      if (mine === seq) {
        stateEl.textContent = "Could not check the YAML: " + e.message;
        if (from === "yaml") lockForm(true);
      }
      return;
    }
    if (mine !== seq) return;
    if (r.ok) {
      showProblems([]);
      stateEl.textContent = "Valid";
      root.dataset.valid = "true";
      if (from === "yaml") {
        model = r.data;
        lockForm(false);
        drawForm();
      }
      return;
    }
    const errs = (r.data && r.data.errors) || [{ message: (r.data && r.data.error) || r.status + " error" }];
    showProblems(errs);
    stateEl.textContent = errs.length + (errs.length === 1 ? " problem" : " problems");
    root.dataset.valid = "false";
    if (from === "yaml") lockForm(true);
  }

  function lockForm(locked) {
    form.disabled = locked;
    form.classList.toggle("locked", locked);
    $("#form-note").hidden = !locked;
  }

  // While typed YAML waits for its validation, the form is disabled (not
  // yet marked locked): a change in it now would rewrite the YAML from
  // the model before the text just typed.
  ta.addEventListener("input", () => { dirty = true; drawGutter(); form.disabled = true; schedule("yaml"); });

  // changed is called by every form control after it updated the model.
  function changed() {
    dirty = true;
    const top = ta.scrollTop;
    ta.value = emit(model);
    ta.scrollTop = top;
    drawGutter();
    schedule("form");
  }

  // ---- form --------------------------------------------------------
  // control builds the input of one field definition ({key, type, help,
  // required, enum, default, min, max, items, fields}) holding value;
  // set(v) stores a new value (undefined: unset) in the model.
  function control(f, value, set, label, path) {
    const id = nextID(f.key || label);
    const helpID = f.help ? id + "-help" : null;
    const lab = el("label", { for: id }, label || f.key, f.required ? el("abbr", { title: "required", class: "req", text: " *" }) : null);
    const help = f.help ? el("small", { id: helpID, class: "help", text: f.help + (f.default !== undefined && f.type !== "boolean" ? " Default: " + f.default + "." : "") }) : null;
    const common = { id, "aria-describedby": helpID, "aria-required": f.required ? "true" : null, name: f.key, "data-key": f.key, "data-path": path };
    const wrap = (input) => el("div", { class: "field", "data-field": f.key }, lab, input, help);

    switch (f.type) {
      case "boolean": {
        const s = el("select", common,
          el("option", { value: "", text: f.default !== undefined ? "default (" + f.default + ")" : "unset" }),
          el("option", { value: "true", text: "true" }), el("option", { value: "false", text: "false" }));
        s.value = value === true ? "true" : value === false ? "false" : "";
        s.addEventListener("change", () => { set(s.value === "" ? undefined : s.value === "true"); changed(); });
        return wrap(s);
      }
      case "enum": {
        const s = el("select", common, el("option", { value: "", text: f.default !== undefined ? "default (" + f.default + ")" : "unset" }),
          ...(f.enum || []).map((v) => el("option", { value: v, text: v })));
        const want = value === undefined || value === null ? "" : String(value);
        // A value the definition does not list (validation reports it)
        // is shown as it is, not silently replaced.
        if (want !== "" && !(f.enum || []).includes(want)) s.append(el("option", { value: want, text: want }));
        s.value = want;
        s.addEventListener("change", () => { set(s.value === "" ? undefined : s.value); changed(); });
        return wrap(s);
      }
      case "integer":
      case "number": {
        const i = el("input", Object.assign({ type: "number", inputmode: "numeric", step: f.type === "number" ? "any" : "1",
          min: f.min, max: f.max, placeholder: f.default !== undefined ? String(f.default) : null }, common));
        if (value !== undefined && value !== null) i.value = String(value);
        i.addEventListener("input", () => {
          const v = i.value.trim();
          set(v === "" ? undefined : Number.isFinite(Number(v)) ? Number(v) : v);
          changed();
        });
        return wrap(i);
      }
      case "yaml": {
        const t = el("textarea", Object.assign({ rows: 6, spellcheck: "false", class: "mono" }, common));
        t.value = value === undefined || value === null ? "" : typeof value === "string" ? value : node(value).lines.join("\n") + "\n";
        t.addEventListener("input", () => { set(t.value.trim() === "" ? undefined : t.value.endsWith("\n") ? t.value : t.value + "\n"); changed(); });
        return wrap(t);
      }
      case "command": {
        if (Array.isArray(value)) {
          const i = el("input", Object.assign({ type: "text", value: JSON.stringify(value), readonly: true }, common));
          return el("div", { class: "field", "data-field": f.key }, lab, i, el("small", { class: "help", text: "An argument list: edit it in the YAML." }));
        }
        return wrap(textInput(f, value, set, common));
      }
      case "list":
        return listControl(f, value, set, id, lab, help, path);
      case "map":
        return mapControl(f, value, set, id, lab, help, path);
      case "object":
        return objectControl(f, value, set, label || f.key, help, helpID, path);
      default: // string, duration, since
        return wrap(textInput(f, value, set, common));
    }
  }

  function textInput(f, value, set, common) {
    const attrs = Object.assign({ type: "text", autocomplete: "off", spellcheck: "false",
      placeholder: f.placeholder || (f.default !== undefined ? String(f.default) : f.type === "duration" ? "e.g. 90s or 5m" : null),
      list: f.datalist, readonly: f.readonly }, common);
    const i = el("input", attrs);
    if (value !== undefined && value !== null) i.value = typeof value === "object" ? JSON.stringify(value) : String(value);
    i.addEventListener("input", () => { set(i.value === "" ? undefined : i.value); changed(); });
    return i;
  }

  // objectControl is a fieldset of the object's fields; an object with
  // nothing set is unset.
  function objectControl(f, value, set, label, help, helpID, path) {
    const obj = value && typeof value === "object" && !Array.isArray(value) ? value : {};
    const fs = el("fieldset", { class: "object", "data-field": f.key, "aria-describedby": helpID, "data-path": path }, el("legend", { text: label }), help);
    for (const c of f.fields || []) {
      fs.append(control(c, obj[c.key], (v) => {
        if (v === undefined) delete obj[c.key]; else obj[c.key] = v;
        set(Object.keys(obj).length > 0 ? obj : undefined);
      }, undefined, path + "." + c.key));
    }
    return fs;
  }

  // listControl is one row per element, with add and remove buttons.
  function listControl(f, value, set, id, lab, help, path) {
    const items = f.items || { type: "string" };
    const arr = Array.isArray(value) ? value.slice() : value === undefined || value === null || value === "" ? [] : [value];
    const rows = el("div", { class: "rows", id, role: "group", "aria-labelledby": id + "-label", "data-path": path });
    const legend = el("span", { id: id + "-label", class: "label" }, lab.textContent);
    const box = el("div", { class: "field list", "data-field": f.key }, legend, rows, help);
    const store = () => {
      const out = arr.filter((v) => v !== undefined && v !== "");
      set(out.length > 0 ? out : undefined);
    };
    const draw = () => {
      rows.replaceChildren();
      arr.forEach((v, i) => {
        const row = el("div", { class: "row" });
        if (items.type === "object") {
          const obj = v && typeof v === "object" ? v : (arr[i] = {});
          row.append(objectControl(items, obj, (nv) => { arr[i] = nv || {}; store(); }, (f.key || "item") + " " + (i + 1), null, null, path + "[" + i + "]"));
        } else if (items.type === "enum") {
          const want = v === undefined || v === null ? "" : String(v);
          const s = el("select", { "aria-label": (f.key || "item") + " " + (i + 1), "data-key": f.key, "data-path": path + "[" + i + "]" },
            el("option", { value: "", text: "pick one" }), ...(items.enum || []).map((x) => el("option", { value: x, text: x })));
          if (want !== "" && !(items.enum || []).includes(want)) s.append(el("option", { value: want, text: want }));
          s.value = want;
          s.addEventListener("change", () => { arr[i] = s.value; store(); changed(); });
          row.append(s);
        } else {
          const input = el("input", { type: "text", autocomplete: "off", spellcheck: "false", "aria-label": (f.key || "item") + " " + (i + 1), "data-key": f.key, "data-path": path + "[" + i + "]" });
          input.value = v === undefined || v === null ? "" : String(v);
          input.addEventListener("input", () => { arr[i] = input.value; store(); changed(); });
          row.append(input);
        }
        const rm = el("button", { type: "button", class: "link rm", "aria-label": "remove " + (f.key || "item") + " " + (i + 1), text: "remove" });
        rm.addEventListener("click", () => { arr.splice(i, 1); store(); changed(); draw(); });
        row.append(rm);
        rows.append(row);
      });
      const add = el("button", { type: "button", class: "link add", "data-add": f.key, text: "+ " + (f.key || "item").replace(/s$/, "") });
      add.addEventListener("click", () => {
        arr.push(items.type === "object" ? {} : "");
        draw();
        const last = rows.querySelectorAll(":scope > .row");
        const first = last.length ? last[last.length - 1].querySelector("input, select") : null;
        if (first) first.focus();
      });
      rows.append(add);
    };
    draw();
    return box;
  }

  // mapControl is one key/value row per entry (build_args, environment,
  // labels, variables).
  function mapControl(f, value, set, id, lab, help, path) {
    const entries = value && typeof value === "object" ? Object.entries(value).map(([k, v]) => [k, v === null ? "" : String(v)]) : [];
    const rows = el("div", { class: "rows", id, role: "group", "aria-labelledby": id + "-label", "data-path": path });
    const legend = el("span", { id: id + "-label", class: "label" }, lab.textContent);
    const box = el("div", { class: "field map", "data-field": f.key }, legend, rows, help);
    const store = () => {
      const out = {};
      for (const [k, v] of entries) if (k.trim() !== "") out[k.trim()] = v;
      set(Object.keys(out).length > 0 ? out : undefined);
    };
    const draw = () => {
      rows.replaceChildren();
      entries.forEach((e, i) => {
        const k = el("input", { type: "text", class: "k", autocomplete: "off", spellcheck: "false", "aria-label": f.key + " name " + (i + 1), value: e[0] });
        const v = el("input", { type: "text", class: "v", autocomplete: "off", spellcheck: "false", "aria-label": f.key + " value " + (i + 1), value: e[1] });
        k.addEventListener("input", () => { e[0] = k.value; store(); changed(); });
        v.addEventListener("input", () => { e[1] = v.value; store(); changed(); });
        const rm = el("button", { type: "button", class: "link rm", "aria-label": "remove " + f.key + " " + (i + 1), text: "remove" });
        rm.addEventListener("click", () => { entries.splice(i, 1); store(); changed(); draw(); });
        rows.append(el("div", { class: "row kv" }, k, v, rm));
      });
      const add = el("button", { type: "button", class: "link add", "data-add": f.key, text: "+ " + f.key.replace(/s$/, "") });
      add.addEventListener("click", () => { entries.push(["", ""]); draw(); rows.querySelectorAll("input.k")[entries.length - 1].focus(); });
      rows.append(add);
    };
    draw();
    return box;
  }

  // The step keys outside the type's settings, as form fields.
  function stepFields(step) {
    const t = typeOf(step.type);
    const kind = t ? t.kind : "";
    const fs = [
      { key: "name", type: "string", required: true, help: "The step's name; its lower-case slug is its id in needs and URLs." },
      { key: "type", type: "enum", required: true, enum: types.map((x) => x.name), help: t ? t.help : "The step type." },
      { key: "order", type: "integer", min: 0, help: "Steps of one order run in parallel after every lower order (default: one after another)." },
      { key: "needs", type: "list", items: { type: "string" }, help: "Steps that must end first; with needs, the step waits for them only." },
    ];
    // runs_on picks the docker pool; a Kubernetes step ignores it, so it is
    // offered there only when the YAML sets it.
    if (kind === "docker" || step.runs_on !== undefined) {
      fs.push({ key: "runs_on", type: "string", datalist: "ed-pools", placeholder: pools.length ? "pick or type a pool" : null,
        help: "Docker runner pool the step runs on (default: the service's default pool, normally default)." });
    }
    if (kind === "docker") {
      fs.push(
        { key: "docker_image", type: "string", required: step.type === "docker_build", help: "Image to build, run, push or pull (default: the image an earlier step built)." },
        { key: "docker_tag", type: "string", help: "Tag of the image (default: latest)." },
        { key: "docker_registry", type: "string", datalist: "ed-registries", placeholder: registries.length ? "pick or type a registry" : null, help: "Registry of the catalogue, by name or id (GET /api/v1/registries)." });
    }
    if (kind === "k8s") {
      fs.push(
        { key: "k8s_cluster", type: "string", datalist: "ed-clusters", placeholder: clusters.length ? "pick or type a cluster" : null, help: "Cluster of the catalogue, by name or id (GET /api/v1/clusters)." },
        { key: "k8s_namespace", type: "string", help: "Namespace of the step's resource." },
        { key: "k8s_resource_name", type: "string", help: "Name of the step's resource." });
    }
    if (step.type === "docker_run" || step.type === "k8s_exec") {
      fs.push({ key: "command", type: "command", help: "A string runs in /bin/sh -c; a list is the argument vector." });
    }
    fs.push(
      { key: "when", type: "enum", enum: ["on_success", "on_failure", "always"], default: "on_success", help: "Whether the step runs after earlier steps succeeded, failed, or always." },
      { key: "conditions", type: "list", help: "Conditions that must all hold for the step to run.", items: { type: "object", fields: [
        { key: "type", type: "enum", required: true, enum: ["branch_equals", "branch_matches", "env_equals", "variable_equals"], help: "What is compared." },
        { key: "name", type: "string", help: "The variable (variable_equals) or environment variable (env_equals) compared." },
        { key: "value", type: "string", help: "The value, or the glob of branch_matches." }] } },
      { key: "timeout", type: "duration", help: "How long one attempt may take, such as 90s or 10m." },
      { key: "retry_policy", type: "object", help: "Retries of a failed step.", fields: [
        { key: "max_retries", type: "integer", min: 0, help: "Retries after the first attempt." },
        { key: "retry_delay_seconds", type: "number", min: 0, help: "Seconds before a retry." },
        { key: "backoff", type: "enum", enum: ["fixed", "exponential"], default: "fixed", help: "Whether the delay doubles with each retry." }] },
      { key: "continue_on_failure", type: "boolean", default: false, label: "allow failure", help: "A failure of this step leaves the run successful." });
    if (secretTypes.includes(step.type) || step.secrets !== undefined) {
      fs.push({ key: "secrets", type: "list", help: "Stored secrets the step receives as environment variables (only " + secretTypes.join(" and ") +
        " steps; the pipeline's own secret of that name, else the global one; never shown in logs or the UI).", items: { type: "object", fields: [
        { key: "name", type: "string", required: true, help: "The secret's name in the secret store." },
        { key: "env", type: "string", help: "The environment variable it becomes (default: its name)." }] } });
    }
    return fs;
  }

  // The step types that may receive secrets (spec.SecretTypes).
  const secretTypes = ["docker_run", "k8s_exec"];

  // The pipeline's settings after its variables (pkg/spec's Pipeline;
  // execution_mode is kept from the YAML, not offered).
  const triggerFields = [
    { key: "type", type: "enum", required: true, enum: ["webhook", "cron"], help: "webhook: a Git provider's push, tag or pull request; cron: a schedule." },
    { key: "provider", type: "enum", enum: ["github", "gitlab", "gitea"], help: "The Git provider sending the webhook (webhook, required)." },
    { key: "secret", type: "string", help: "Name of the webhook's secret in the secret store: the pipeline's own, else the global one (webhook; this or secret_env is required)." },
    { key: "secret_env", type: "string", placeholder: "ANSFLOW_WEBHOOK_…", help: "Instead of secret: an environment variable of the pipeline service named ANSFLOW_WEBHOOK_… holding the webhook secret (webhook)." },
    { key: "events", type: "list", items: { type: "enum", enum: ["push", "tag", "pull_request", "merge_request"] }, help: "Events that start a run (webhook; default: push)." },
    { key: "branches", type: "list", items: { type: "string" }, help: "Branch globs a push or pull request must match, such as main or release/* (webhook; default: every branch)." },
    { key: "tags", type: "list", items: { type: "string" }, help: "Tag globs a tag event must match (webhook; default: every tag)." },
    { key: "paths", type: "list", items: { type: "string" }, help: "Path globs one changed file must match (webhook; default: any change)." },
    { key: "pull_request", type: "object", help: "Which pull request events start a run (webhook).", fields: [
      { key: "actions", type: "list", items: { type: "enum", enum: ["opened", "synchronize", "reopened", "closed", "merged", "edited", "ready_for_review"] },
        help: "Actions that start a run (default: opened, synchronize, reopened)." },
      { key: "forks", type: "enum", enum: ["approve", "ignore", "run"], default: "approve", help: "What a pull request from a fork does: wait for an operator's approval, be ignored, or run; never with secrets." }] },
    { key: "schedule", type: "string", placeholder: "0 3 * * *", help: "A 5-field cron expression, in UTC (cron, required)." },
    { key: "branch", type: "string", help: "The branch a scheduled run builds (cron)." },
  ];
  const pipelineFields = [
    { key: "timeout", type: "duration", help: "How long a whole run may take, such as 30m or 2h (default: no limit)." },
    { key: "concurrency", type: "integer", min: 0, help: "Runs of this pipeline active at once; more wait as queued, oldest first (0 or empty: no limit)." },
    { key: "cancel_previous", type: "boolean", default: false, label: "cancel previous", help: "A new run cancels the active runs of the same pipeline and branch started before it." },
    { key: "repository", type: "string", placeholder: "https://git.example.com/team/app.git", help: "The Git repository runs clone when their trigger names none (cron, a manual trigger); a branch or tag is pinned to its commit when the run is created." },
    { key: "from_repository", type: "boolean", default: false, label: "steps from the repository", help: "Take the steps, variables and timeout from pipeline_file in the repository at the run's commit." },
    { key: "pipeline_file", type: "string", placeholder: ".ansflow.yml", help: "The file the steps come from, relative to the repository's root (with steps from the repository; default .ansflow.yml)." },
    { key: "triggers", type: "list", items: { type: "object", fields: triggerFields }, help: "What starts the pipeline besides a manual trigger: a Git webhook or a schedule." },
  ];

  function stepControl(step, i) {
    const t = typeOf(step.type);
    const box = el("fieldset", { class: "step-form", "data-step": i, "data-path": "pipeline.steps[" + i + "]" },
      el("legend", { text: "Step " + (i + 1) + ": " + (step.name || "unnamed") + " (" + (step.type || "no type") + ")" }));
    for (const f of stepFields(step)) {
      box.append(control(f, step[f.key], (v) => {
        if (v === undefined) delete step[f.key]; else step[f.key] = v;
        if (f.key === "type") {
          // Settings of another type do not carry over.
          delete step.docker_config; delete step.k8s_config;
          drawForm();
        }
        if (f.key === "name") box.firstChild.textContent = "Step " + (i + 1) + ": " + (step.name || "unnamed") + " (" + step.type + ")";
      }, f.label || f.key, "pipeline.steps[" + i + "]." + f.key));
    }
    if (t) {
      box.append(control({ key: t.config_key, type: "object", fields: t.fields, help: t.help }, step[t.config_key], (v) => {
        if (v === undefined) delete step[t.config_key]; else step[t.config_key] = v;
      }, t.config_key + " (" + t.name + ")", "pipeline.steps[" + i + "]." + t.config_key));
    }
    const tools = el("div", { class: "step-tools" });
    const mk = (text, label, fn, disabled) => {
      const b = el("button", { type: "button", class: "link", "aria-label": label, text, disabled });
      b.addEventListener("click", fn);
      tools.append(b);
    };
    mk("↑ up", "move step " + (i + 1) + " up", () => { move(i, -1); }, i === 0);
    mk("↓ down", "move step " + (i + 1) + " down", () => { move(i, 1); }, i === model.steps.length - 1);
    mk("remove step", "remove step " + (i + 1), () => { model.steps.splice(i, 1); changed(); drawForm(); });
    box.append(tools);
    return box;
  }

  function move(i, d) {
    const j = i + d;
    [model.steps[i], model.steps[j]] = [model.steps[j], model.steps[i]];
    changed();
    drawForm();
  }

  // drawForm draws the whole form from the model.
  function drawForm() {
    if (!Array.isArray(model.steps)) model.steps = [];
    const frag = document.createDocumentFragment();
    frag.append(el("legend", { class: "sr-only", text: "Pipeline form" }));
    frag.append(control({ key: "name", type: "string", required: true, readonly: !!name,
      help: name ? "A saved pipeline keeps its name; clone it to copy it under another." : "The pipeline's name; its slug is its address." },
    model.name, (v) => { model.name = v === undefined ? "" : v; }, "pipeline name", "pipeline.name"));
    frag.append(control({ key: "description", type: "string", help: "One line saying what the pipeline is for." }, model.description, (v) => { if (v === undefined) delete model.description; else model.description = v; }, "description", "pipeline.description"));
    frag.append(control({ key: "variables", type: "map", items: { type: "string" }, help: "Variables with their default values; a trigger may override them." }, model.variables, (v) => { if (v === undefined) delete model.variables; else model.variables = v; }, "variables", "pipeline.variables"));
    for (const f of pipelineFields) {
      frag.append(control(f, model[f.key], (v) => { if (v === undefined) delete model[f.key]; else model[f.key] = v; }, f.label || f.key, "pipeline." + f.key));
    }
    const list = el("div", { id: "steps", class: "steps", "data-path": "pipeline.steps" }, el("h3", { text: "Steps" }));
    model.steps.forEach((s, i) => list.append(stepControl(s, i)));
    frag.append(list);
    const pick = el("select", { id: "add-type" }, ...types.map((t) => el("option", { value: t.name, text: t.name })));
    const add = el("button", { type: "button", id: "add-step", text: "Add step" });
    add.addEventListener("click", () => {
      const type = pick.value;
      const base = type.replace(/^(docker|k8s)_/, "");
      let n = base, k = 2;
      while (model.steps.some((s) => s.name === n)) n = base + "-" + k++;
      model.steps.push({ name: n, type });
      changed();
      drawForm();
      const fss = form.querySelectorAll("fieldset.step-form");
      const last = fss[fss.length - 1];
      if (last) { last.scrollIntoView({ block: "nearest" }); last.querySelector("input").focus(); }
    });
    frag.append(el("div", { class: "add-step" }, el("label", { for: "add-type", text: "New step of type" }), pick, add));
    frag.append(el("datalist", { id: "ed-registries" }, ...registries.map((r) => el("option", { value: r.name, label: r.url || r.id }))));
    frag.append(el("datalist", { id: "ed-clusters" }, ...clusters.map((c) => el("option", { value: c.name, label: c.context || c.id }))));
    frag.append(el("datalist", { id: "ed-pools" }, ...pools.map((p) => el("option", { value: p }))));
    form.replaceChildren(frag);
  }

  // ---- save, import, clone -----------------------------------------
  $("#save").addEventListener("click", async () => {
    const err = $("#save-error");
    err.textContent = "";
    const r = await call(name ? "PUT" : "POST", name ? "/api/v1/pipelines/" + encodeURIComponent(name) : "/api/v1/pipelines",
      { yaml: ta.value, file: (name || "pipeline") + ".yaml" });
    if (r.ok) {
      dirty = false;
      location.href = "/pipelines/" + encodeURIComponent(r.data.name);
      return;
    }
    err.textContent = "Not saved: " + ((r.data && r.data.error) || r.status);
    if (r.data && r.data.errors) showProblems(r.data.errors);
  });

  $("#import-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    ta.value = await file.text();
    dirty = true;
    form.disabled = true;
    drawGutter();
    validate("yaml");
  });

  const clone = $("#clone");
  if (clone) clone.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const to = clone.elements.name.value.trim();
    const r = await call("POST", "/api/v1/pipelines/" + encodeURIComponent(clone.dataset.pipeline) + "/clone", { name: to });
    if (r.ok) location.href = "/pipelines/" + encodeURIComponent(r.data.name);
    else $("#clone-error").textContent = (r.data && r.data.error) || String(r.status);
  });

  // ---- start -------------------------------------------------------
  (async function start() {
    drawGutter();
    const [t, regs, cls, runners] = await Promise.all([
      call("GET", "/api/v1/step-types"), call("GET", "/api/v1/registries"), call("GET", "/api/v1/clusters"), call("GET", "/api/v1/runners")]);
    if (!t.ok) {
      form.replaceChildren(el("p", { class: "error", text: "Could not load the step types: " + ((t.data && t.data.error) || t.status) }));
      return;
    }
    types = t.data;
    // A grant limited to some pipelines may not read the catalogues: the
    // fields then take a typed name.
    registries = regs.ok ? regs.data : [];
    clusters = cls.ok ? cls.data : [];
    // The docker pools the runners serve, for runs_on.
    pools = runners.ok ? [...new Set(runners.data.filter((x) => x.kind === "docker").flatMap((x) => x.pools || []))].sort() : [];
    if (name) {
      await validate("yaml");
    } else {
      drawForm();
      changed();
      dirty = false; // the empty start is nothing to lose
    }
    root.dataset.ready = "true";
  })();
})();
