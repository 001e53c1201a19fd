// Search by photo, results page: the box over the shopper's photo marks the area searched. The
// shopper drags it or its corners (mouse, pen or finger), draws a new one on the photo, moves it with
// the arrow keys (Shift resizes), or picks one of the garments found; the search then runs again for
// that area: the page posts its photo back with the new box and swaps in the new results.
// Without this script the page shows the server's box as a static outline.
(function () {
  const view = document.querySelector("[data-crop-view]");
  const form = document.querySelector("[data-search-form]");
  if (!view || !form) return;
  const frame = view.querySelector("[data-crop-frame]");
  const box = view.querySelector("[data-crop-box]");
  const photo = view.querySelector("[data-query-photo]");
  const caption = view.querySelector("[data-crop-caption]");
  const position = view.querySelector("[data-crop-position]");
  const errorBox = view.querySelector("[data-crop-error]");
  const status = view.querySelector("[data-crop-status]");
  const regionButtons = [...view.querySelectorAll("[data-region]")];
  const wholePhoto = form.elements.namedItem("whole_photo");
  const fileInput = form.elements.namedItem("image");

  const MIN_SIZE = 0.05; // of the photo's width or height
  const KEY_STEP = 0.05;
  const KEY_PAUSE_MS = 400;
  const UPDATED = "Results updated for the area you chose.";

  let current = parseBox(view.dataset.crop) || { x0: 0, y0: 0, x1: 1, y1: 1 };
  let source = view.dataset.cropSource;
  let drag = null;
  let timer = 0;
  let pending = null; // the AbortController of the search in flight
  let photoBlob = null;

  function parseBox(text) {
    const values = (text || "").split(",").map(Number);
    if (values.length !== 4 || !values.every(Number.isFinite)) return null;
    const [x0, y0, x1, y1] = values;
    return { x0, y0, x1, y1 };
  }

  function boxParam(b) {
    return [b.x0, b.y0, b.x1, b.y1].map((value) => value.toFixed(4)).join(",");
  }

  function place(element, b) {
    for (const key of ["x0", "y0", "x1", "y1"]) element.style.setProperty(`--${key}`, b[key]);
  }

  const clamp = (value, low, high) => Math.min(high, Math.max(low, value));
  const percent = (value) => `${Math.round(value * 100)}%`;

  function moved(from, dx, dy) {
    const x = clamp(dx, -from.x0, 1 - from.x1);
    const y = clamp(dy, -from.y0, 1 - from.y1);
    return { x0: from.x0 + x, y0: from.y0 + y, x1: from.x1 + x, y1: from.y1 + y };
  }

  // Resizing by a corner ("nw", "ne", "sw", "se"): the opposite corner stays put.
  function resized(from, corner, dx, dy) {
    const b = { ...from };
    if (corner.includes("w")) b.x0 = clamp(from.x0 + dx, 0, from.x1 - MIN_SIZE);
    else b.x1 = clamp(from.x1 + dx, from.x0 + MIN_SIZE, 1);
    if (corner.includes("n")) b.y0 = clamp(from.y0 + dy, 0, from.y1 - MIN_SIZE);
    else b.y1 = clamp(from.y1 + dy, from.y0 + MIN_SIZE, 1);
    return b;
  }

  function spanned(a, b) {
    return { x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y), x1: Math.max(a.x, b.x), y1: Math.max(a.y, b.y) };
  }

  function draw(b) {
    current = b;
    place(box, b);
    position.textContent = `The box covers ${percent(b.x0)} to ${percent(b.x1)} across the photo and ${percent(b.y0)} to ${percent(b.y1)} down.`;
    for (const button of regionButtons) {
      const region = parseBox(button.dataset.region);
      const same = region && ["x0", "y0", "x1", "y1"].every((key) => Math.abs(region[key] - b[key]) < 0.005);
      button.setAttribute("aria-pressed", String(Boolean(same)));
    }
  }

  // The shopper chose this area: it is searched as it is, not the whole photo.
  function choose(b) {
    draw(b);
    source = "shopper";
    if (wholePhoto) wholePhoto.checked = false;
  }

  // Where a pointer is on the photo, in fractions of its width and height.
  function pointAt(event) {
    const rect = frame.getBoundingClientRect();
    return { x: clamp((event.clientX - rect.left) / rect.width, 0, 1), y: clamp((event.clientY - rect.top) / rect.height, 0, 1) };
  }

  frame.addEventListener("pointerdown", (event) => {
    if (drag || (event.pointerType === "mouse" && event.button !== 0)) return;
    const handle = event.target.closest("[data-handle]");
    const mode = handle ? handle.dataset.handle : box.contains(event.target) ? "move" : "draw";
    if (mode === "draw" && event.pointerType === "touch") return; // a finger on the photo scrolls the page
    event.preventDefault();
    clearTimeout(timer);
    drag = { mode, pointerId: event.pointerId, start: pointAt(event), from: current, fromSource: source, changed: false };
    frame.setPointerCapture(event.pointerId);
    box.focus({ preventScroll: true });
  });

  frame.addEventListener("pointermove", (event) => {
    if (!drag || event.pointerId !== drag.pointerId) return;
    const at = pointAt(event);
    const dx = at.x - drag.start.x;
    const dy = at.y - drag.start.y;
    if (drag.mode === "move") choose(moved(drag.from, dx, dy));
    else if (drag.mode === "draw") choose(spanned(drag.start, at));
    else choose(resized(drag.from, drag.mode, dx, dy));
    drag.changed = true;
  });

  function endDrag(event, cancelled) {
    if (!drag || event.pointerId !== drag.pointerId) return;
    const { changed, from, fromSource, mode } = drag;
    drag = null;
    const tooSmall = current.x1 - current.x0 < MIN_SIZE || current.y1 - current.y0 < MIN_SIZE;
    if (cancelled || (mode === "draw" && tooSmall)) {
      draw(from);
      source = fromSource;
    } else if (changed) {
      search(UPDATED);
    }
  }
  frame.addEventListener("pointerup", (event) => endDrag(event, false));
  frame.addEventListener("pointercancel", (event) => endDrag(event, true));

  const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      search(UPDATED);
      return;
    }
    const arrow = ARROWS[event.key];
    if (!arrow || event.altKey || event.ctrlKey || event.metaKey) return;
    event.preventDefault();
    const [dx, dy] = arrow.map((sign) => sign * KEY_STEP);
    choose(event.shiftKey ? resized(current, "se", dx, dy) : moved(current, dx, dy));
    clearTimeout(timer);
    timer = setTimeout(() => search(UPDATED), KEY_PAUSE_MS);
  });

  // The garments found in the photo: outlined while a button is hovered or focused, searched when chosen.
  const regionOutline = document.createElement("div");
  regionOutline.className = "crop-region";
  regionOutline.hidden = true;
  if (regionButtons.length) frame.append(regionOutline);
  for (const button of regionButtons) {
    const region = parseBox(button.dataset.region);
    if (!region) continue;
    const outline = () => { place(regionOutline, region); regionOutline.hidden = false; };
    const hide = () => { regionOutline.hidden = true; };
    button.addEventListener("pointerenter", outline);
    button.addEventListener("focus", outline);
    button.addEventListener("pointerleave", hide);
    button.addEventListener("blur", hide);
    button.addEventListener("click", () => {
      choose(region);
      search(UPDATED);
    });
  }

  // Filters changed with no new photo chosen: search this photo again rather than ask for it anew.
  form.addEventListener("submit", (event) => {
    if (fileInput && fileInput.files.length) return; // a new photo: the page's ordinary search
    event.preventDefault();
    search("Results updated.");
  });

  // The photo as the server showed it (a data: URI), decoded here: CSP lets the page fetch only its own origin.
  function queryPhoto() {
    if (!photoBlob) {
      const [head, body] = photo.src.split(",", 2);
      const type = (head.match(/^data:([^;,]+)/) || [])[1] || "image/jpeg";
      const bytes = atob(body);
      const array = new Uint8Array(bytes.length);
      for (let i = 0; i < bytes.length; i += 1) array[i] = bytes.charCodeAt(i);
      photoBlob = new Blob([array], { type });
    }
    return photoBlob;
  }

  function announce(message) {
    status.textContent = "";
    setTimeout(() => { status.textContent = message; }, 50); // a changed text is announced again
  }

  function failure(doc, code) {
    const alert = doc.querySelector("main [role=alert]");
    if (alert && alert.textContent.trim()) return alert.textContent.trim().replace(/\s+/g, " ");
    const heading = doc.querySelector("main h1, h1");
    const detail = heading && heading.parentElement.querySelector("p");
    if (heading) return [heading.textContent, detail && detail.textContent].filter(Boolean).join(". ").replace(/\s+/g, " ");
    return `The search failed (error ${code}). Please try again.`;
  }

  async function search(message) {
    clearTimeout(timer);
    if (pending) pending.abort();
    const controller = new AbortController();
    pending = controller;
    const data = new FormData(form);
    data.set("image", queryPhoto(), "photo.jpg");
    data.delete("crop");
    if (source === "shopper" && !(wholePhoto && wholePhoto.checked)) data.set("crop", boxParam(current));
    const results = document.querySelector("[data-search-results]");
    results.setAttribute("aria-busy", "true");
    try {
      const response = await fetch(window.location.href, { method: "POST", body: data, signal: controller.signal });
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const freshResults = doc.querySelector("[data-search-results]");
      const freshView = doc.querySelector("[data-crop-view]");
      if (!response.ok || !freshResults || !freshView) {
        errorBox.textContent = failure(doc, response.status);
        return;
      }
      errorBox.textContent = "";
      results.replaceWith(freshResults);
      source = freshView.dataset.cropSource;
      draw(parseBox(freshView.dataset.crop) || current);
      const freshCaption = freshView.querySelector("[data-crop-caption]");
      if (freshCaption) caption.textContent = freshCaption.textContent;
      announce(message);
    } catch (error) {
      if (error.name !== "AbortError") errorBox.textContent = "We could not reach the shop. Check your connection and try again.";
    } finally {
      if (pending === controller) {
        pending = null;
        const shown = document.querySelector("[data-search-results]");
        if (shown) shown.removeAttribute("aria-busy");
      }
    }
  }

  view.querySelector("[data-crop-outline]").remove();
  view.querySelector("[data-crop-controls]").hidden = false;
  box.hidden = false;
  box.tabIndex = 0;
  draw(current);
})();
