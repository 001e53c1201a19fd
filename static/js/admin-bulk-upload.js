// Bulk upload in admin. The drop page: photos dropped on the zone go into its file input (which works
// without this script), and the choice is summed up. The report page: progress is followed live, and the
// page reloads when the batch's state changes (done, failed, stalled) to show the full report.
(function () {
  const POLL_MILLISECONDS = 1000;
  const FINISHED = ["done", "failed", "stalled"];

  const form = document.querySelector("[data-bulk-upload-form]");
  if (form) {
    const zone = form.querySelector("[data-drop-zone]");
    const input = zone.querySelector("input[type=file]");
    const selection = zone.querySelector("[data-selection]");
    const maxFiles = Number(form.dataset.maxFiles);

    const describe = () => {
      const count = input.files.length;
      selection.textContent = count === 0 ? "" : `${count} photo${count === 1 ? "" : "s"} chosen` +
        (count > maxFiles ? `: choose at most ${maxFiles} per batch.` : ".");
      selection.classList.toggle("is-too-many", count > maxFiles);
    };
    input.addEventListener("change", describe);
    window.dropZone(zone, (files) => {
      input.files = files;
      describe();
    });
    form.addEventListener("submit", () => {
      const button = form.querySelector("[data-submit]");
      button.disabled = true;
      button.value = `Uploading ${input.files.length} photos…`;
    });
  }

  const report = document.querySelector("[data-bulk-upload-progress]");
  if (report && !FINISHED.includes(report.dataset.state)) {
    const bar = report.querySelector("[data-progress-bar]");
    const text = report.querySelector("[data-progress-text]");
    const poll = async () => {
      try {
        const response = await fetch(report.dataset.bulkUploadProgress, { headers: { Accept: "application/json" } });
        if (response.ok) {
          const progress = await response.json();
          if (progress.state !== report.dataset.state) {
            window.location.reload();
            return;
          }
          bar.max = progress.total;
          bar.value = progress.done;
          const summary = `${progress.done} of ${progress.total} files and rows done`;
          if (text.textContent !== summary) text.textContent = summary;
        }
      } catch (error) {
        // the server is briefly unreachable: try again at the next tick
      }
      window.setTimeout(poll, POLL_MILLISECONDS);
    };
    window.setTimeout(poll, POLL_MILLISECONDS);
  }
})();
