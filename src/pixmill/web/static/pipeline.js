"use strict";
// Pipeline editors built from the catalogue at /api/v1/operations: one control per declared
// parameter, within its declared range. An editor turns its steps into pipeline text such as
// "grayscale | blur(ksize=7)", which is what the API takes.
window.PixmillPipeline = (function () {
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (v === true) node.setAttribute(k, "");
      else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, String(v));
    });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function defaults(op) {
    const out = {};
    op.params.forEach((p) => { out[p.name] = p.default; });
    return out;
  }

  function newStep(ops, name) {
    return { op: name, params: defaults(ops[name]) };
  }

  function cloneSteps(steps) {
    return steps.map((s) => ({ op: s.op, params: Object.assign({}, s.params) }));
  }

  function valueText(v) {
    if (v === null || v === undefined) return "auto";
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "number") return String(Math.round(v * 10000) / 10000);
    return String(v);
  }

  function stepText(ops, step) {
    const op = ops[step.op];
    const args = op.params
      .filter((p) => valueText(step.params[p.name]) !== valueText(p.default))
      .map((p) => p.name + "=" + valueText(step.params[p.name]));
    return args.length ? op.name + "(" + args.join(", ") + ")" : op.name;
  }

  function pipelineText(ops, steps) {
    return steps.map((s) => stepText(ops, s)).join(" | ");
  }

  function niceStep(p) {
    if (p.type === "int") return p.step || 1;
    const span = (p.max ?? 1) - (p.min ?? 0);
    const raw = span / 200;
    const power = Math.pow(10, Math.floor(Math.log10(raw || 0.01)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || power;
    return Math.max(step, 0.0001);
  }

  function numberControl(p, value, id, set) {
    const box = el("div", { class: "number" });
    let low = p.min, high = p.max;
    if (p.odd && low !== null && low % 2 === 0) low += 1;
    const step = niceStep(p);
    const range = el("input", { type: "range", id: id, min: low, max: high, step: step,
                                "aria-describedby": id + "-help" });
    const exact = el("input", { type: "number", min: low, max: high, step: p.type === "int" ? step : "any",
                                "aria-label": p.name + " (exact value)", class: "exact" });
    const show = (v) => { if (v !== null) { range.value = v; exact.value = v; } };
    show(value === null ? p.default : value);
    if (low === null || high === null) range.hidden = true;
    range.addEventListener("input", () => { exact.value = range.value; set(Number(range.value)); });
    exact.addEventListener("change", () => {
      if (exact.value === "" || !exact.checkValidity()) return;   // the server names the problem if sent
      range.value = exact.value; set(Number(exact.value));
    });
    box.append(range, exact);
    if (p.nullable) {
      const auto = el("input", { type: "checkbox", id: id + "-auto" });
      auto.checked = value === null;
      const toggle = () => { range.disabled = exact.disabled = auto.checked; };
      toggle();
      auto.addEventListener("change", () => { toggle(); set(auto.checked ? null : Number(range.value)); });
      const label = el("label", { for: id + "-auto", class: "auto" });
      label.append(auto, document.createTextNode(" automatic"));
      box.append(label);
    }
    return box;
  }

  function paramControl(p, value, id, set) {
    const wrap = el("div", { class: "param" });
    const label = el("label", { for: id }, p.name);
    const help = el("span", { id: id + "-help", class: "hint" }, p.description || "");
    let control;
    if (p.type === "choice") {
      control = el("select", { id: id, "aria-describedby": id + "-help" });
      p.choices.forEach((c) => control.append(el("option", { value: c }, c)));
      control.value = value;
      control.addEventListener("change", () => set(control.value));
    } else if (p.type === "bool") {
      control = el("input", { type: "checkbox", id: id, "aria-describedby": id + "-help" });
      control.checked = !!value;
      control.addEventListener("change", () => set(control.checked));
    } else {
      control = numberControl(p, value, id, set);
    }
    wrap.append(label, control, help);
    return wrap;
  }

  // An editor: a list of steps (operation + parameters), "Add step", and the pipeline as text,
  // which may also be typed directly.
  function createEditor(catalogue, options) {
    const ops = catalogue.byName;
    const id = options.id;
    let steps = cloneSteps(options.steps);
    const root = el("div", { class: "editor" });
    const list = el("ol", { class: "steps", "aria-label": "Steps" });
    const add = el("button", { type: "button", class: "add-step" }, "Add step");
    const textLabel = el("label", { for: id + "-text", class: "text-label" }, "Pipeline");
    const text = el("input", { type: "text", id: id + "-text", class: "pipeline-text", spellcheck: "false",
                               autocomplete: "off", "aria-describedby": id + "-text-help" });
    const textHelp = el("span", { id: id + "-text-help", class: "hint" },
                        "Built from the controls above; you may also type a pipeline, e.g. grayscale | blur(ksize=7).");
    root.append(list, add, textLabel, text, textHelp);

    function changed() {
      text.value = pipelineText(ops, steps);
      if (options.onChange) options.onChange();
    }

    function renderSteps() {
      list.textContent = "";
      const template = document.getElementById("step-template");
      steps.forEach((step, i) => {
        const item = template.content.firstElementChild.cloneNode(true);
        const select = item.querySelector(".op");
        select.id = id + "-s" + i + "-op";
        catalogue.list.forEach((op) => select.append(el("option", { value: op.name }, op.name.replace(/_/g, " "))));
        select.value = step.op;
        item.querySelector(".op-help").textContent = ops[step.op].description;
        select.addEventListener("change", () => {
          steps[i] = newStep(ops, select.value);
          renderSteps(); changed();
          list.querySelectorAll(".op")[i].focus();
        });
        const remove = item.querySelector(".remove-step");
        remove.hidden = steps.length === 1;
        remove.addEventListener("click", () => { steps.splice(i, 1); renderSteps(); changed(); add.focus(); });
        const params = item.querySelector(".params");
        ops[step.op].params.forEach((p) => {
          params.append(paramControl(p, step.params[p.name], id + "-s" + i + "-" + p.name,
                                     (v) => { step.params[p.name] = v; changed(); }));
        });
        list.append(item);
      });
    }

    add.addEventListener("click", () => {
      steps.push(newStep(ops, steps[steps.length - 1].op));
      renderSteps(); changed();
      const selects = list.querySelectorAll(".op");
      selects[selects.length - 1].focus();
    });

    renderSteps();
    text.value = pipelineText(ops, steps);
    return {
      el: root,
      text: () => text.value.trim(),
      steps: () => cloneSteps(steps),
      setSteps(next) { steps = cloneSteps(next); renderSteps(); changed(); },
    };
  }

  function indexCatalogue(list) {
    const byName = {};
    list.forEach((op) => { byName[op.name] = op; });
    return { list: list, byName: byName };
  }

  return { createEditor, indexCatalogue, newStep, pipelineText, el };
})();
