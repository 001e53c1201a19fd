// Search by photo: preview the chosen photo, accept drag and drop, and route the phone camera
// button's photo into the form's one file field. The form works without any of this.
(function () {
  const zone = document.querySelector("[data-dropzone]");
  if (!zone) return;
  const input = document.getElementById("id_image");
  const camera = document.getElementById("camera-input");
  const preview = zone.querySelector("[data-preview]");
  const fileName = zone.querySelector("[data-file-name]");

  function show(file) {
    if (!file) return;
    fileName.textContent = file.name;
    if (!file.type.startsWith("image/")) return;
    if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
    preview.dataset.url = URL.createObjectURL(file);
    preview.src = preview.dataset.url;
    preview.hidden = false;
  }

  function use(files) {
    const transfer = new DataTransfer();
    transfer.items.add(files[0]);
    input.files = transfer.files;
    show(files[0]);
  }

  input.addEventListener("change", () => show(input.files[0]));
  camera.addEventListener("change", () => camera.files.length && use(camera.files));
  window.dropZone(zone, use);
})();
