// Segment page: a photo -> POST /predict -> the mask over the photo (adjustable opacity), and a
// legend of the classes with their colours and each one's share of the picture.
"use strict";

(async () => {
  const { $, el, percent, ms } = Roost;
  const spec = await Roost.start();
  const colour = Object.fromEntries(spec.classes.map((c) => [c.name, c.colour]));
  let shown = null; // {picture, mask}

  function draw() {
    if (!shown) return;
    const { picture, mask } = shown;
    const canvas = $("#overlay");
    // Small pictures (CamVid-tiny is 128 x 96) are drawn larger, so the class edges stay crisp.
    const scale = Math.max(1, Math.floor(960 / mask.width));
    [canvas.width, canvas.height] = [mask.width * scale, mask.height * scale];
    const ctx = canvas.getContext("2d");
    ctx.globalAlpha = 1;
    ctx.imageSmoothingEnabled = true;
    if (picture) ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = picture ? $("#opacity").value / 100 : 1;
    ctx.imageSmoothingEnabled = false; // a class index is not to be blended with its neighbour
    ctx.drawImage(mask, 0, 0, canvas.width, canvas.height);
  }

  function legend(fractions) {
    const items = spec.classes
      .map((c) => ({ name: c.name, share: fractions[c.name] || 0 }))
      .sort((a, b) => b.share - a.share);
    $("#legend").replaceChildren(
      ...items.map(({ name, share }) => {
        const swatch = el("span", { className: "swatch" });
        swatch.style.background = colour[name];
        return el("li", { className: share > 0 ? "" : "absent" }, swatch, el("span", { className: "name", title: name }, name),
          el("span", { className: "share" }, share > 0 ? percent(share) : "–"));
      }),
    );
  }

  async function segment(file) {
    const got = await Roost.predictPhoto(file);
    if (!got) return;
    const { picture, answer } = got;
    const r = answer.data;
    const png = Uint8Array.from(atob(r.mask_png_base64), (c) => c.charCodeAt(0));
    shown = { picture, mask: await createImageBitmap(new Blob([png], { type: "image/png" })) };
    draw();
    legend(r.class_fractions);
    $("#timing").textContent = `${r.width} × ${r.height} px · model ${r.model_version} · answered in ${ms(answer.ms)}`;
    $("#result").hidden = false;
  }

  $("#opacity").addEventListener("input", draw);
  Roost.picker(segment);
})().catch((err) => Roost.show(Roost.$("#error"), String(err.message || err)));
