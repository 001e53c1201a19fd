// Product change page in admin: while a photo waits to be embedded, fetch the "What shoppers see"
// panel every 2 s, swap it in when it changes and announce that. Without this script the panel
// asks staff to reload the page.
(function () {
  const panel = document.querySelector("[data-recommender-panel]");
  if (!panel) return;
  const body = panel.querySelector("[data-panel-body]");
  const status = panel.querySelector("[data-panel-status]");
  const INTERVAL_MS = 2000;
  const GIVE_UP_AFTER_MS = 5 * 60 * 1000; // the sweep may take longer: then a reload shows it
  const started = Date.now();

  function current() {
    return body.querySelector("[data-waiting]");
  }

  function waiting() {
    return current()?.dataset.waiting === "true";
  }

  function stop(message) {
    panel.classList.remove("is-updating");
    if (message) status.textContent = message;
  }

  // The control that had focus, in the new panel (the same Re-embed button or product link).
  function counterpart(element) {
    if (element.matches("button[value]")) return body.querySelector(`button[value="${CSS.escape(element.value)}"]`);
    if (element.matches("a[href]")) return body.querySelector(`a[href="${CSS.escape(element.getAttribute("href"))}"]`);
    return null;
  }

  function replace(html) {
    const next = document.createElement("div");
    next.innerHTML = html;
    if (next.innerHTML === body.innerHTML) return;
    const focused = body.contains(document.activeElement) ? document.activeElement : null;
    body.replaceChildren(...next.childNodes);
    if (focused) counterpart(focused)?.focus();
    status.textContent = `Updated. ${current()?.dataset.summary ?? ""}`;
  }

  async function refresh() {
    if (Date.now() - started > GIVE_UP_AFTER_MS) {
      stop("Stopped checking for the embedding: reload the page to see it.");
      return;
    }
    let response;
    try {
      response = await fetch(panel.dataset.fragmentUrl, { credentials: "same-origin" });
    } catch {
      setTimeout(refresh, INTERVAL_MS); // the network or the server blinked: try again
      return;
    }
    if (!response.ok || response.redirected) { // signed out, or the product is gone
      stop("This panel can no longer update itself: reload the page.");
      return;
    }
    replace(await response.text());
    if (waiting()) setTimeout(refresh, INTERVAL_MS);
    else stop();
  }

  if (waiting()) {
    panel.classList.add("is-updating");
    setTimeout(refresh, INTERVAL_MS);
  }
})();
