// Tabular page: a form of the columns the model reads (choices from its own vocabularies) ->
// POST /predict {"row": ...} -> salary class and probability; the server's 422s beside each field.
"use strict";

(async () => {
  const { $, el, show, bars, percent, ms } = Roost;
  const spec = await Roost.start();
  const fieldErrors = {};

  function field(f) {
    const id = `f-${f.name}`;
    let input;
    if (f.type === "category") {
      input = el("select", { id, name: f.name }, el("option", { value: "" }, "(unknown)"),
        ...f.choices.map((c) => el("option", { value: c, selected: c === f.default }, c)));
    } else {
      input = el("input", { id, name: f.name, type: "number", inputMode: "numeric", step: "any" });
      if (f.min !== null) input.min = f.min;
      if (f.max !== null) input.max = f.max;
      if (f.default !== null) input.value = f.default;
    }
    const error = el("p", { className: "field-error", id: `${id}-error`, hidden: true });
    fieldErrors[f.name] = error;
    const range = f.min !== null && f.max !== null ? `${f.min} – ${f.max}` : f.min !== null ? `≥ ${f.min}` : f.max !== null ? `≤ ${f.max}` : "";
    const bounds = f.type === "number" && range ? el("p", { className: "hint" }, range) : "";
    return el("div", { className: "field" }, el("label", { htmlFor: id }, f.name), input, bounds, error);
  }
  $("#fields").replaceChildren(...spec.fields.map(field));

  function row() {
    const out = {};
    for (const f of spec.fields) {
      const raw = $(`#f-${f.name}`).value.trim();
      // A number field sends what was typed (the server judges it); empty means missing.
      out[f.name] = raw === "" ? null : f.type === "number" && !Number.isNaN(Number(raw)) ? Number(raw) : raw;
    }
    return out;
  }

  function clearErrors() {
    for (const node of Object.values(fieldErrors)) {
      show(node, "");
      node.parentElement.classList.remove("invalid");
    }
    show($("#error"), "");
  }

  $("#form").addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    $("#submit").disabled = true;
    const answer = await Roost.postJSON("predict", { row: row() });
    $("#submit").disabled = false;
    if (!answer.ok) {
      $("#result").hidden = true;
      const general = [];
      for (const p of Roost.problems(answer.data, answer.status)) {
        const node = fieldErrors[p.field];
        if (node) {
          show(node, p.message);
          node.parentElement.classList.add("invalid");
        } else {
          general.push(p.message);
        }
      }
      show($("#error"), general.length ? `${general.join("; ")} (HTTP ${answer.status})` : `Please check the fields marked (HTTP ${answer.status}).`);
      return;
    }
    const r = answer.data;
    $("#answer").replaceChildren(`salary ${r.salary}`, el("small", {}, `${percent(r.probability)} probability`));
    bars($("#bars"), r.probabilities, r.salary);
    $("#timing").textContent = `model ${r.model_version} · answered in ${ms(answer.ms)}`;
    $("#result").hidden = false;
  });
})().catch((err) => Roost.show(Roost.$("#error"), String(err.message || err)));
