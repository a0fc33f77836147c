// Bird page: a photo -> POST /predict -> label, a bar per class, model version, time taken.
"use strict";

(async () => {
  const { $, show, bars, percent, ms } = Roost;
  await Roost.start();

  async function classify(file) {
    show($("#error"), "");
    $("#busy").hidden = false;
    const [picture, answer] = await Promise.all([Roost.bitmap(file), Roost.sendPhoto(file)]);
    $("#busy").hidden = true;
    if (!answer.ok) {
      $("#result").hidden = true;
      show($("#error"), Roost.errorText(answer.data, answer.status));
      return;
    }
    const r = answer.data;
    if (picture) {
      const canvas = $("#photo");
      [canvas.width, canvas.height] = [picture.width, picture.height];
      canvas.getContext("2d").drawImage(picture, 0, 0);
    }
    $("#photo").hidden = !picture;
    const answerText = $("#answer");
    answerText.replaceChildren(r.label, Roost.el("small", {}, `${percent(r.probability)} sure`));
    bars($("#bars"), r.probabilities, r.label);
    $("#timing").textContent = `model ${r.model_version} · answered in ${ms(answer.ms)}`;
    $("#result").hidden = false;
  }

  Roost.picker(classify);
})().catch((err) => Roost.show(Roost.$("#error"), String(err.message || err)));
