"use strict";
// The upload page: add images, choose a pipeline per image, submit, follow the progress over
// Server-Sent Events, then show before/after results with downloads. Client file names are
// only ever put into the page as text (textContent), never as HTML.
(function () {
  const P = window.PixmillPipeline;
  const el = P.el;
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const state = {
    catalogue: null, items: [], nextKey: 1, allEditor: null, job: null, source: null,
    token: sessionStorage.getItem("pixmill-token") || "",
    maxFiles: Number(body.dataset.maxFiles), maxFileBytes: Number(body.dataset.maxFileBytes),
  };

  // ---- talking to the API

  function headers() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  function local(url) {            // the API answers absolute URLs; the page stays on its own origin
    const u = new URL(url, location.href);
    return u.pathname + u.search;
  }

  async function api(path, options) {
    const response = await fetch(local(path), Object.assign({ headers: headers() }, options || {}));
    if (response.status === 401) { $("token-box").hidden = false; }
    return response;
  }

  async function errorText(response) {
    try {
      const data = await response.json();
      return data.message || data.error || response.statusText;
    } catch (e) {
      return "the server answered " + response.status + " " + response.statusText;
    }
  }

  function say(text) { $("status").textContent = text; }

  function alertBox(text) {
    const box = $("alert");
    box.textContent = text || "";
    box.hidden = !text;
  }

  // The same binary units as the server's messages (pixmill.limits.format_bytes).
  function humanBytes(n) {
    for (const [unit, size] of [["GiB", 1073741824], ["MiB", 1048576], ["KiB", 1024]]) {
      if (n >= size) {
        const value = n / size;
        return (value >= 100 ? value.toFixed(0) : value.toFixed(1).replace(/\.0$/, "")) + " " + unit;
      }
    }
    return n + " B";
  }

  // ---- images in, one editor each

  function addFiles(files) {
    alertBox("");
    const problems = [];
    Array.from(files).forEach((file) => {
      if (state.items.length >= state.maxFiles) {
        problems.push(file.name + ": not added, a job takes at most " + state.maxFiles + " images");
      } else if (file.size > state.maxFileBytes) {
        problems.push(file.name + ": not added, " + humanBytes(file.size) + " is over the " +
                      humanBytes(state.maxFileBytes) + " per-file limit");
      } else {
        addItem(file);
      }
    });
    if (problems.length) alertBox(problems.join("\n"));
    refresh();
    say(state.items.length + " image" + (state.items.length === 1 ? "" : "s") + " ready");
  }

  function addItem(file) {
    const key = state.nextKey++;
    const item = { key: key, file: file, thumb: URL.createObjectURL(file) };
    const li = el("li", { class: "item", "data-key": key });
    const head = el("div", { class: "item-head" });
    const img = el("img", { class: "thumb", src: item.thumb, alt: "Preview of " + file.name, loading: "lazy" });
    img.addEventListener("error", () => img.replaceWith(
      el("div", { class: "thumb none" }, (extension(file.name) || "this format") + ": no preview in this browser")));
    const title = el("div", { class: "item-title" });
    title.append(el("strong", { class: "name" }, file.name), el("span", { class: "hint" }, humanBytes(file.size)));
    const remove = el("button", { type: "button", class: "remove", "aria-label": "Remove " + file.name }, "Remove");
    remove.addEventListener("click", () => removeItem(key));
    head.append(img, title, remove);
    item.editor = P.createEditor(state.catalogue, { id: "item" + key, steps: state.allEditor.steps() });
    const box = el("fieldset", { class: "item-editor" });
    box.append(el("legend", {}, "Operation for " + file.name), item.editor.el);
    li.append(head, box);
    $("items").append(li);
    item.li = li;
    state.items.push(item);
  }

  function removeItem(key) {
    const i = state.items.findIndex((it) => it.key === key);
    if (i < 0) return;
    const [item] = state.items.splice(i, 1);
    URL.revokeObjectURL(item.thumb);
    item.li.remove();
    refresh();
    const next = state.items[i] || state.items[i - 1];
    (next ? next.li.querySelector(".remove") : $("pick")).focus();
  }

  function refresh() {
    const n = state.items.length;
    $("choose").hidden = n === 0;
    $("submit").textContent = "Process " + n + " image" + (n === 1 ? "" : "s");
    $("submit").disabled = n === 0;
  }

  // ---- submit, then follow

  function submit() {
    alertBox("");
    // Settings first and each file's operation before the file: the server then starts on the
    // first images while the rest of the upload is still being stored.
    const form = new FormData();
    form.append("format", $("format").value);
    form.append("quality", $("quality").value);
    state.items.forEach((item) => {
      form.append("operations", item.editor.text());
      form.append("files", item.file, item.file.name);
    });
    $("submit").disabled = true;
    showProgress(state.items.map((item, n) => ({ n: n, name: item.file.name, state: "uploading" })));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/jobs");
    Object.entries(headers()).forEach(([k, v]) => xhr.setRequestHeader(k, v));
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      $("overall").value = 0;
      $("overall-label").textContent = "Uploading… " + Math.round(100 * e.loaded / e.total) + "%";
    });
    xhr.addEventListener("load", () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = { message: xhr.statusText }; }
      if (xhr.status === 202) {
        state.job = data;
        remember(data.id);
        history.replaceState(null, "", "#job=" + encodeURIComponent(data.id));
        $("choose").hidden = true; $("add").hidden = true;
        follow(data);
      } else {
        if (xhr.status === 401) $("token-box").hidden = false;
        $("progress-box").hidden = true;
        $("submit").disabled = false;
        alertBox("Not accepted: " + (data.message || ("the server answered " + xhr.status)));
      }
    });
    xhr.addEventListener("error", () => {
      $("submit").disabled = false;
      alertBox("The upload failed: the server could not be reached.");
    });
    xhr.send(form);
  }

  function showProgress(tasks) {
    $("progress-box").hidden = false;
    const list = $("progress-list");
    list.textContent = "";
    tasks.forEach((t) => {
      const li = el("li", { "data-n": t.n });
      const id = "task-progress-" + t.n;
      li.append(el("label", { for: id, class: "name" }, t.name), el("progress", { id: id, max: 1 }),
                el("span", { class: "state" }, t.state));
      list.append(li);
    });
  }

  const WORDS = { queued: "waiting", running: "processing…", done: "done", failed: "failed",
                  cancelled: "cancelled", uploading: "uploading" };

  function renderProgress(job) {
    state.job = job;
    const list = $("progress-list");
    if (list.children.length !== job.tasks.length) showProgress(job.tasks);
    job.tasks.forEach((t) => {
      const li = list.querySelector('[data-n="' + t.n + '"]');
      const bar = li.querySelector("progress");
      li.className = "task " + t.state;
      if (t.state === "running") bar.removeAttribute("value");          // indeterminate while it runs
      else bar.value = t.state === "queued" ? 0 : 1;
      li.querySelector(".state").textContent = WORDS[t.state] + (t.error ? ": " + t.error : "");
    });
    const overall = $("overall");
    overall.max = job.total; overall.value = job.ended;
    $("overall-label").textContent = job.ended + " of " + job.total + " images finished" +
      (job.counts.failed ? " (" + job.counts.failed + " failed)" : "");
  }

  function follow(job) {
    renderProgress(job);
    if (state.source) state.source.close();
    if (!state.token && window.EventSource) {
      const source = new EventSource(local(job.events_url));
      state.source = source;
      source.addEventListener("progress", (e) => renderProgress(JSON.parse(e.data)));
      source.addEventListener("end", () => { source.close(); finish(); });
      source.addEventListener("gone", () => { source.close(); alertBox("This job no longer exists."); });
      // a closed EventSource (the server refused the stream, e.g. 503 when busy) falls back to polling
      source.addEventListener("error", () => { if (source.readyState === EventSource.CLOSED) poll(); });
    } else {
      readEvents(job.events_url);
    }
  }

  // EventSource cannot send an Authorization header, so with a token the stream is read with fetch.
  async function readEvents(url) {
    for (let attempt = 0; attempt < 100; attempt++) {
      const response = await api(url);
      if (response.status === 503) { poll(); return; }
      if (!response.ok) { alertBox(await errorText(response)); return; }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          let event = "message", data = "";
          block.split("\n").forEach((line) => {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          });
          if (event === "progress") renderProgress(JSON.parse(data));
          if (event === "end") { finish(); return; }
          if (event === "gone") { alertBox("This job no longer exists."); return; }
        }
      }
    }
  }

  async function poll() {
    const id = state.job.id;
    for (let i = 0; i < 3600 && state.job && state.job.id === id; i++) {
      const response = await api(state.job.status_url);
      if (!response.ok) { alertBox(await errorText(response)); return; }
      const job = await response.json();
      renderProgress(job);
      if (job.state === "done" || job.state === "cancelled") { finish(); return; }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  // ---- results

  async function setImage(img, url) {
    if (!state.token) { img.src = local(url); return; }
    const response = await api(url);
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  }

  function setDownload(a, url) {
    a.href = local(url);
    if (state.token) a.dataset.fetch = url;      // fetched with the token by the handler in wire()
  }

  // With a token, a plain link cannot authenticate: fetch the file and save it from a blob URL.
  async function fetchDownload(a) {
    const response = await api(a.dataset.fetch);
    if (!response.ok) { alertBox(await errorText(response)); return; }
    const named = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
    const link = el("a", { href: URL.createObjectURL(await response.blob()),
                           download: a.getAttribute("download") || (named ? named[1] : "download") });
    document.body.append(link); link.click(); link.remove();
  }

  // The file's extension, for a note where the browser cannot draw an image (HEIC in most browsers, TIFF).
  function extension(name) {
    const match = /\.(\w{2,5})$/.exec(name);
    return match ? match[1].toUpperCase() : "";
  }

  function figure(caption, url, alt, thumb, format) {
    const fig = el("figure");
    const img = el("img", { alt: alt, loading: "lazy" });
    img.addEventListener("error", () => img.replaceWith(el("p", { class: "hint" },
      "No preview: this browser cannot show " + (format ? String(format).toUpperCase() : "this format") +
      "; use the download link.")));
    if (thumb) img.src = thumb; else setImage(img, url);
    fig.append(img, el("figcaption", {}, caption));
    return fig;
  }

  async function finish() {
    const response = await api(state.job.status_url);
    if (!response.ok) { alertBox(await errorText(response)); return; }
    const job = await response.json();
    renderProgress(job);
    const gallery = $("gallery");
    gallery.textContent = "";
    job.tasks.forEach((t) => {
      const picked = state.items[t.n];
      const li = el("li", { class: "result " + t.state });
      li.append(el("h3", {}, t.name), el("p", { class: "hint pipeline" }, t.pipeline));
      const pair = el("div", { class: "pair" });
      pair.append(figure("Before", t.source_url, "Original " + t.name, picked && picked.thumb, t.source_format));
      if (t.state === "done") {
        pair.append(figure("After (" + t.width + "×" + t.height + ", " + String(t.result_format).toUpperCase() + ")",
                           t.result_url, "Result of " + t.pipeline + " on " + t.name, null, t.result_format));
        li.append(pair);
        const a = el("a", { class: "button", download: "" }, "Download " + t.name + " result");
        setDownload(a, t.result_url + "?download=true");
        li.append(a);
        if (t.notes.length) li.append(el("p", { class: "hint" }, "Notes: " + t.notes.join("; ")));
      } else {
        li.append(pair, el("p", { class: "error" }, "This image failed: " + (t.error || t.state)));
      }
      gallery.append(li);
    });
    const zip = $("zip");
    zip.hidden = !job.counts.done;
    setDownload(zip, job.archive_url);
    $("results").hidden = false;
    say("Finished: " + job.counts.done + " of " + job.total + " images processed" +
        (job.counts.failed ? ", " + job.counts.failed + " failed" : "") + ".");
    $("results-title").focus();
  }

  function startOver() {
    if (state.source) state.source.close();
    state.items.forEach((item) => URL.revokeObjectURL(item.thumb));
    state.items = []; state.job = null;
    $("items").textContent = ""; $("gallery").textContent = "";
    ["progress-box", "results"].forEach((id) => { $(id).hidden = true; });
    $("add").hidden = false;
    history.replaceState(null, "", location.pathname);
    refresh(); alertBox(""); $("pick").focus();
  }

  // ---- recent jobs: the token's, from the listing; without a token, the ones this browser made

  const MINE = "pixmill-jobs";

  function remember(id) {
    const ids = [id].concat(mine().filter((other) => other !== id)).slice(0, 20);
    localStorage.setItem(MINE, JSON.stringify(ids));
  }

  function mine() {
    try { return JSON.parse(localStorage.getItem(MINE) || "[]").filter((id) => /^[A-Za-z0-9_-]+$/.test(id)); }
    catch (e) { return []; }
  }

  async function recentJobs() {
    if (state.token) {
      const response = await api("/api/v1/jobs?limit=10");
      return response.ok ? (await response.json()).jobs : [];
    }
    const found = [];
    for (const id of mine().slice(0, 10)) {
      const response = await api("/api/v1/jobs/" + id);
      if (response.ok) found.push(await response.json());
    }
    localStorage.setItem(MINE, JSON.stringify(found.map((job) => job.id)));   // forget the expired ones
    return found;
  }

  async function showRecent() {
    const jobs = await recentJobs();
    const list = $("recent-list");
    list.textContent = "";
    jobs.forEach((job) => {
      const names = job.tasks.slice(0, 3).map((t) => t.name).join(", ") + (job.tasks.length > 3 ? ", …" : "");
      const a = el("a", { href: "#job=" + encodeURIComponent(job.id) }, names || job.id);   // names as text only
      a.addEventListener("click", (e) => {
        e.preventDefault();
        history.replaceState(null, "", "#job=" + encodeURIComponent(job.id));
        resume(job.id);
      });
      const when = new Date(job.created_at * 1000).toLocaleString();
      const item = el("li", { class: "recent " + job.state });
      item.append(a, el("span", { class: "hint" }, " " + job.state + " · " + job.total + " images · " + when));
      list.append(item);
    });
    $("recent").hidden = jobs.length === 0;
  }

  // ---- wiring

  function wire() {
    const drop = $("drop"), input = $("file-input");
    document.addEventListener("click", (e) => {
      const a = e.target.closest && e.target.closest("a[data-fetch]");
      if (a) { e.preventDefault(); fetchDownload(a); }
    });
    // a real button: Enter and Space click it, and a click may open the file chooser
    $("pick").addEventListener("click", () => input.click());
    drop.addEventListener("click", (e) => { if (e.target === drop || e.target.tagName === "P") input.click(); });
    input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (e) => { e.preventDefault(); addFiles(e.dataTransfer.files); });
    $("apply-all").addEventListener("click", () => {
      state.items.forEach((item) => item.editor.setSteps(state.allEditor.steps()));
      say("Applied “" + state.allEditor.text() + "” to all " + state.items.length + " images");
    });
    $("quality").addEventListener("input", () => { $("quality-out").textContent = $("quality").value; });
    $("submit").addEventListener("click", submit);
    $("clear").addEventListener("click", startOver);
    $("again").addEventListener("click", startOver);
    $("results-title").tabIndex = -1;
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.token = $("token").value.trim();
      sessionStorage.setItem("pixmill-token", state.token);
      $("token-box").hidden = true;
      start();
    });
  }

  async function start() {
    const response = await api("/api/v1/operations");
    if (!response.ok) {
      if (response.status !== 401) alertBox("Cannot load the operations: " + await errorText(response));
      return;
    }
    state.catalogue = P.indexCatalogue(await response.json());
    const first = state.catalogue.byName.grayscale ? "grayscale" : state.catalogue.list[0].name;
    state.allEditor = P.createEditor(state.catalogue, { id: "all", steps: [P.newStep(state.catalogue.byName, first)] });
    $("all-editor").textContent = "";
    $("all-editor").append(state.allEditor.el);
    body.classList.add("ready");
    const match = /^#job=([A-Za-z0-9_-]+)$/.exec(location.hash);
    if (match) resume(match[1]);
    showRecent();
  }

  async function resume(id) {
    const response = await api("/api/v1/jobs/" + id);
    if (!response.ok) { alertBox(await errorText(response)); return; }
    const job = await response.json();
    state.job = job;
    $("add").hidden = true;
    if (job.state === "done" || job.state === "cancelled") { renderProgress(job); finish(); }
    else follow(job);
  }

  wire();
  if (body.dataset.tokens === "yes" && !state.token) $("token-box").hidden = false;
  else start();
})();
