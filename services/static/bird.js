// Bird page: a photo -> POST /predict -> label, a bar per class, model version, time taken.
"use strict";

(async () => {
  const { $, bars, percent, ms } = Roost;
  await Roost.start();

  async function classify(file) {
    const got = await Roost.predictPhoto(file);
    if (!got) return;
    const { picture, answer } = got;
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
