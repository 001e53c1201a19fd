// Files dragged onto a zone go to `onDrop`; the zone is marked "is-dragging" while they hover.
// Shared by search by photo and the admin's bulk upload (each loads this file first).
window.dropZone = function (zone, onDrop) {
  ["dragenter", "dragover"].forEach((name) =>
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("is-dragging"); }));
  ["dragleave", "drop"].forEach((name) =>
    zone.addEventListener(name, () => zone.classList.remove("is-dragging")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) onDrop(event.dataTransfer.files);
  });
};
