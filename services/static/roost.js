// Roost demo pages: what the four pages share. Plain JS, no build step, nothing from elsewhere.
// URLs are relative, so a page works behind a path prefix too.
"use strict";

const Roost = (() => {
  const $ = (selector, root = document) => root.querySelector(selector);

  // el("p", {className: "x"}, "text", child): a new element (no innerHTML: answers are text).
  function el(tag, props = {}, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    for (const child of children) node.append(child);
    return node;
  }

  const percent = (p) => `${(100 * p).toFixed(1)} %`;

  // POST/GET a route; resolves to {ok, status, data, ms} whatever the answer (never throws on 4xx).
  async function call(route, init = {}) {
    const started = performance.now();
    let response;
    try {
      response = await fetch(route, init);
    } catch (err) {
      return { ok: false, status: 0, data: { error: `the server did not answer (${err.message})` }, ms: 0 };
    }
    const ms = performance.now() - started;
    let data;
    try {
      data = await response.json();
    } catch {
      data = { error: `${response.status} ${response.statusText}` };
    }
    return { ok: response.ok, status: response.status, data, ms };
  }

  const postJSON = (route, body) =>
    call(route, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

  // The server's error answers: {"error": ..., "field": ...} or {"error": ..., "detail": [{loc, msg}]}.
  // Returns [{field, message}] (field: the last part of its path, or null).
  function problems(data, status) {
    const out = [];
    if (data && Array.isArray(data.detail)) {
      for (const d of data.detail) {
        const loc = (d.loc || []).filter((p) => typeof p === "string" && p !== "body");
        out.push({ field: loc.length ? loc[loc.length - 1] : null, message: d.msg || String(d) });
      }
    }
    if (!out.length) {
      const field = data && typeof data.field === "string" ? data.field.split(".").pop() : null;
      const text = (data && (data.error || data.message)) || `the server answered ${status}`;
      out.push({ field, message: String(text) });
    }
    return out;
  }

  function errorText(data, status) {
    return problems(data, status).map((p) => p.message).join("; ") + ` (HTTP ${status})`;
  }

  function show(node, text) {
    node.textContent = text;
    node.hidden = !text;
  }

  // Header: model version from /demo/spec; every page starts here.
  async function start() {
    const answer = await call("demo/spec");
    if (!answer.ok) throw new Error(errorText(answer.data, answer.status));
    $("#version").textContent = answer.data.version;
    return answer.data;
  }

  // Class probabilities as bars, best first.
  function bars(list, probabilities, best) {
    list.replaceChildren();
    const sorted = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of sorted) {
      const fill = el("div", { className: "fill" });
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      list.append(
        el("li", { className: name === best ? "bar best" : "bar" },
          el("span", { className: "name", title: name }, name),
          el("div", { className: "track" }, fill),
          el("span", { className: "value" }, percent(p)),
        ),
      );
    }
  }

  // Photo picker: a file input inside a drop zone, plus a camera input on touch screens.
  // onFile(file) is called with each chosen or dropped file.
  function picker(onFile) {
    const zone = $("#drop");
    for (const input of document.querySelectorAll("input[type=file]")) {
      input.addEventListener("change", () => {
        if (input.files.length) onFile(input.files[0]);
        input.value = ""; // choosing the same file again still answers
      });
    }
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer.files.length) onFile(e.dataTransfer.files[0]);
    });
  }

  // The photo as a bitmap (no blob: or data: URL, so the CSP stays 'self'), or null if the
  // browser cannot decode it (the server will say why).
  async function bitmap(blob) {
    try {
      return await createImageBitmap(blob);
    } catch {
      return null;
    }
  }

  // Send one photo to POST /predict as the multipart field `image`, as curl -F does.
  function sendPhoto(file) {
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    return call("predict", { method: "POST", body: form });
  }

  // A photo page's request: clears the error, shows #busy while the photo is decoded here and
  // answered there; on a refusal hides #result and shows the server's message. Returns
  // { picture, answer } for an answer to show, else null.
  async function predictPhoto(file) {
    show($("#error"), "");
    $("#busy").hidden = false;
    const [picture, answer] = await Promise.all([bitmap(file), sendPhoto(file)]);
    $("#busy").hidden = true;
    if (!answer.ok) {
      $("#result").hidden = true;
      show($("#error"), errorText(answer.data, answer.status));
      return null;
    }
    return { picture, answer };
  }

  const ms = (t) => (t < 1000 ? `${Math.round(t)}\u00a0ms` : `${(t / 1000).toFixed(2)}\u00a0s`);

  return { $, el, call, postJSON, problems, errorText, show, start, bars, picker, bitmap, sendPhoto, predictPhoto, percent, ms };
})();
