// Collab page: a user -> POST /recommend {"user", "n"} -> the top-n unseen movies. A user the model
// never saw gets 404 from /recommend; the page says so and shows the cold-start answer instead:
// POST /predict for that user and every movie (all flagged cold_start by the server), best first.
"use strict";

(async () => {
  const { $, el, show, ms } = Roost;
  const spec = await Roost.start();
  const [low, high] = spec.y_range;
  $("#known").replaceChildren(...spec.users.map((u) => el("option", { value: String(u) }, `user ${u}`)));

  const asId = (text) => (/^\d+$/.test(text) && String(Number(text)) === text ? Number(text) : text);

  function table(items) {
    $("#rows").replaceChildren(
      ...items.map((item, i) => {
        const fill = el("div", { className: "fill" });
        fill.style.width = `${(100 * (item.rating - low)) / (high - low)}%`;
        return el("tr", {},
          el("td", {}, String(i + 1)),
          el("td", {}, String(item.movie), item.cold_start ? " " : "", item.cold_start ? el("span", { className: "tag" }, "cold start") : ""),
          el("td", { className: "rating" },
            el("div", { className: "rate" }, el("span", { className: "value" }, item.rating.toFixed(2)), el("div", { className: "track" }, fill))),
        );
      }),
    );
  }

  // The cold-start answer: the user's predicted rating for every movie, through /predict.
  async function coldStart(user, n) {
    const ratings = [];
    let elapsed = 0;
    for (let i = 0; i < spec.movies.length; i += spec.max_pairs) {
      const pairs = spec.movies.slice(i, i + spec.max_pairs).map((movie) => ({ user, movie }));
      const answer = await Roost.postJSON("predict", { pairs });
      if (!answer.ok) return answer;
      elapsed += answer.ms;
      ratings.push(...answer.data);
    }
    ratings.sort((a, b) => b.rating - a.rating);
    return { ok: true, ms: elapsed, data: ratings.slice(0, n) };
  }

  $("#form").addEventListener("submit", async (e) => {
    e.preventDefault();
    show($("#error"), "");
    show($("#n-error"), "");
    const typed = $("#typed").value.trim();
    const user = asId(typed || $("#known").value);
    const n = Number($("#n").value);
    $("#submit").disabled = true;
    let answer = await Roost.postJSON("recommend", { user, n });
    let cold = null;
    if (answer.status === 404) {
      cold = answer.data.error;
      answer = await coldStart(user, n);
    }
    $("#submit").disabled = false;
    if (!answer.ok) {
      $("#result").hidden = true;
      const [p] = Roost.problems(answer.data, answer.status);
      if (p.field === "n") show($("#n-error"), p.message);
      show($("#error"), Roost.errorText(answer.data, answer.status));
      return;
    }
    const items = cold ? answer.data : answer.data.recommendations;
    $("#heading").textContent = `Top ${items.length} for user ${user}`;
    show($("#cold"), cold
      ? `New user: the model has no ratings from user ${user}, so /recommend answers 404 ("${cold}"). ` +
        "Below is the cold-start answer from /predict: every movie's rating for an unknown user, which is " +
        "mostly how well liked the movie is overall. Every new user gets this same list."
      : "");
    table(items);
    const version = cold ? answer.data[0]?.model_version : answer.data.model_version;
    $("#timing").textContent = `model ${version ?? spec.version} · answered in ${ms(answer.ms)}`;
    $("#result").hidden = false;
  });
})().catch((err) => Roost.show(Roost.$("#error"), String(err.message || err)));
