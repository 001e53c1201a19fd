// Product gallery: a thumbnail click shows that photo in the main frame.
document.addEventListener("click", (event) => {
  const link = event.target.closest("[data-gallery-image]");
  const main = document.getElementById("gallery-main");
  if (!link || !main) return;
  event.preventDefault();
  main.src = link.href;
});
