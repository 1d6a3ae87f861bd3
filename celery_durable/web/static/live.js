// A run's page follows the run in place. It polls the run's JSON (/api/runs/<id>) and,
// when its "stamp" moved, fetches the page once more and swaps in only the parts marked
// data-live: the forms are never redrawn, so what an operator is typing stays. A form the
// run's status no longer offers is removed, unless someone is typing in it (then it stays,
// marked, and the server's answer says why it is refused). Operations go as the forms would,
// with the page's XSRF token; the destructive ones ask first; what the server answers is
// shown as it said it, success or refusal.
"use strict";

(function () {
  const run = document.getElementById("run");
  if (!run) {
    return;
  }
  const live = document.getElementById("live");
  const outcome = document.getElementById("outcome");
  const ACTIVE = 2000;
  const IDLE = 10000;
  let timer = null;
  let busy = false;

  // Addresses from the origin alone: a page opened as http://user:password@host/ must not
  // hand its credentials to fetch(), which refuses such URLs.
  function address(path) {
    return new URL(path, window.location.origin).href;
  }

  function say(text, bad) {
    live.textContent = text;
    live.classList.toggle("error", Boolean(bad));
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }

  async function answer(response) {
    try {
      return await response.json();
    } catch (e) {
      return { error: response.status + " " + response.statusText };
    }
  }

  async function poll() {
    if (document.hidden || busy) {
      schedule(ACTIVE);
      return;
    }
    try {
      const response = await fetch(address(run.dataset.api), {
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      const body = await answer(response);
      if (!response.ok) {
        say("Live update paused: " + body.error + (body.hint ? " " + body.hint : ""), true);
        schedule(IDLE);
        return;
      }
      if (body.stamp !== run.dataset.stamp) {
        await redraw();
      }
      say("Live: this page follows the run (checked " + new Date().toLocaleTimeString() + ").");
      schedule(body.finished ? IDLE : ACTIVE);
    } catch (e) {
      say("Live update paused: " + e.message, true);
      schedule(IDLE);
    }
  }

  async function redraw() {
    busy = true;
    try {
      const path = window.location.pathname + window.location.search;
      const response = await fetch(address(path), { cache: "no-store" });
      if (!response.ok) {
        throw new Error("the page answered " + response.status + " " + response.statusText);
      }
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("run");
      if (!fresh) {
        throw new Error("the page has no run");
      }
      for (const part of document.querySelectorAll("[data-live]")) {
        const now = page.querySelector('[data-live="' + part.dataset.live + '"]');
        if (now && now.innerHTML !== part.innerHTML) {
          part.replaceChildren(...Array.from(now.childNodes, (n) => document.importNode(n, true)));
        }
      }
      follow(page);
      run.dataset.stamp = fresh.dataset.stamp;
      run.dataset.finished = fresh.dataset.finished;
      keepInView();
    } finally {
      busy = false;
    }
  }

  // Someone is typing in a form: a field of it has the focus, or holds what was typed.
  function typing(form) {
    const fields = Array.from(form.elements).filter(
      (e) => e.tagName !== "BUTTON" && e.type !== "hidden"
    );
    return fields.some((e) => e === document.activeElement || e.value !== e.defaultValue);
  }

  // The forms offered now: new ones added in their place, gone ones removed (or kept, marked,
  // while typed in); the ones still offered are left exactly as they are.
  function follow(page) {
    const box = document.getElementById("ops");
    const fresh = page.getElementById("ops");
    if (!box || !fresh) {
      return;
    }
    const offered = new Set(Array.from(fresh.querySelectorAll("form.op"), (f) => f.id));
    for (const form of box.querySelectorAll("form.op")) {
      if (offered.has(form.id)) {
        form.classList.remove("stale");
      } else if (typing(form)) {
        form.classList.add("stale");
        form.title = "No longer offered for the run's status; sent, it will be refused.";
      } else {
        form.remove();
      }
    }
    let before = null;
    for (const form of fresh.querySelectorAll("form.op")) {
      let mine = document.getElementById(form.id);
      if (!mine) {
        mine = document.importNode(form, true);
        mine.addEventListener("submit", submit);
        if (before) {
          before.after(mine);
        } else {
          box.prepend(mine);
        }
      }
      before = mine;
    }
  }

  function keepInView() {
    const box = document.getElementById("graph");
    if (!box || box.scrollWidth <= box.clientWidth) {
      return;
    }
    const node =
      box.querySelector("g.node.failed") ||
      box.querySelector("g.node.running") ||
      box.querySelector("g.node.waiting");
    if (!node) {
      return;
    }
    const shown = box.getBoundingClientRect();
    const drawn = node.getBoundingClientRect();
    if (drawn.left < shown.left || drawn.right > shown.right) {
      box.scrollLeft += drawn.left - shown.left - (shown.width - drawn.width) / 2;
    }
  }

  function tell(text, bad) {
    outcome.hidden = false;
    outcome.textContent = text;
    outcome.classList.toggle("error", Boolean(bad));
    outcome.classList.toggle("ok", !bad);
  }

  function ask(form) {
    const dialog = document.getElementById("confirm");
    dialog.querySelector(".question").textContent = form.dataset.confirm;
    dialog.querySelector("button.yes").textContent = form.dataset.op;
    dialog.returnValue = "";
    dialog.onclose = () => {
      if (dialog.returnValue === "yes") {
        send(form, true);
      }
    };
    dialog.showModal();
  }

  function submit(event) {
    event.preventDefault();
    const form = event.currentTarget;
    if (form.dataset.confirm) {
      ask(form);
    } else {
      send(form, false);
    }
  }

  async function send(form, confirmed) {
    const data = new URLSearchParams(new FormData(form));
    if (confirmed) {
      data.set("confirm", "yes");
    }
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const response = await fetch(address(form.getAttribute("action")), {
        method: "POST",
        body: data,
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      const body = await answer(response);
      if (!response.ok) {
        tell(body.error + (body.hint ? " " + body.hint : ""), true);
        return;
      }
      tell(body.said, false);
      form.reset();
      if (body.id !== run.dataset.id) {
        window.location.assign(address("/runs/" + encodeURIComponent(body.id)));
        return;
      }
      await redraw();
    } catch (e) {
      tell("Not sent: " + e.message, true);
    } finally {
      button.disabled = false;
    }
  }

  for (const form of document.querySelectorAll("#ops form.op")) {
    form.addEventListener("submit", submit);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      schedule(0);
    }
  });
  say("Live: this page follows the run.");
  keepInView();
  schedule(ACTIVE);
})();
