// Replaces the fleet section with the server's fresh rendering every few seconds; no framework, no build step.
"use strict";
(function () {
  const fleet = document.getElementById("fleet");
  const live = document.getElementById("live");
  const every = Number(fleet.dataset.everyMs) || 2000;

  async function refresh() {
    try {
      const answer = await fetch(fleet.dataset.source, { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401) {
        window.location.assign("/dashboard/login");  // the session ended: ask for the key again
        return;
      }
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      fleet.innerHTML = await answer.text();  // server-rendered and escaped by the server's templates
      live.textContent = "updated " + new Date().toLocaleTimeString();
      live.dataset.state = "live";
    } catch (error) {
      live.textContent = "not updating: " + error.message;
      live.dataset.state = "down";
    }
    window.setTimeout(refresh, every);
  }

  window.setTimeout(refresh, every);
})();
