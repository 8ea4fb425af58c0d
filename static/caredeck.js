// Caredeck dashboard behaviour, plain JavaScript. Pages opt in with data attributes.

// <div data-section-url="..."> loads a patient-chart section on its own, so a failing
// section shows an error in its own box and the rest of the chart still works.
function loadSections() {
  document.querySelectorAll("[data-section-url]").forEach(function (box) {
    fetch(box.dataset.sectionUrl, { credentials: "same-origin", redirect: "manual" })
      .then(function (response) {
        if (response.type === "opaqueredirect") {
          // The session ended: the server wants the sign-in page, not this fragment.
          box.textContent = "Your session has ended; reload the page to sign in again.";
          box.classList.add("failed");
          return;
        }
        return response.text().then(function (html) {
          box.innerHTML = html;
          if (!response.ok) box.classList.add("failed");
          scrollableTables();
        });
      })
      .catch(function () {
        box.textContent = "This section could not be loaded (network error).";
        box.classList.add("failed");
      });
  });
}

// <button data-confirm="..."> asks before a consequential action (no inline script: CSP).
// One listener on the document, so buttons in chart sections loaded later ask too.
function confirmActions() {
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
  });
}

// <p data-auto-refresh="60"> reloads the page every 60 s while the tab is visible; a tab
// that comes back after a longer absence reloads at once.
function autoRefresh() {
  var marker = document.querySelector("[data-auto-refresh]");
  if (!marker) return;
  var period = Number(marker.dataset.autoRefresh) * 1000;
  var loadedAt = Date.now();
  function reloadIfDue() {
    if (document.visibilityState === "visible" && Date.now() - loadedAt >= period) {
      window.location.reload();
    }
  }
  window.setInterval(reloadIfDue, 5000);
  document.addEventListener("visibilitychange", reloadIfDue);
}

// A form that came back with errors: the focus starts on their summary (each entry links to
// its field), so keyboard and screen-reader users begin with what to correct.
function focusErrors() {
  var summary = document.querySelector(".error-summary[tabindex]");
  if (summary) summary.focus();
}

// A table wider than the screen scrolls inside its .table-scroll box. Such a box becomes a
// Tab stop named after its table, so that keyboard users can scroll it with the arrow keys in
// every browser, and screen readers say what it holds; a box that fits is left alone.
function scrollableTables() {
  document.querySelectorAll(".table-scroll").forEach(function (box) {
    if (box.scrollWidth > box.clientWidth) {
      box.tabIndex = 0;
      box.setAttribute("role", "region");
      box.setAttribute("aria-label", tableName(box));
    } else {
      box.removeAttribute("tabindex");
      box.removeAttribute("role");
      box.removeAttribute("aria-label");
    }
  });
}

// The table's caption, else the heading just before its box.
function tableName(box) {
  var caption = box.querySelector("caption");
  if (caption) return caption.textContent.trim();
  for (var element = box.previousElementSibling; element; element = element.previousElementSibling) {
    if (/^H[1-6]$/.test(element.tagName)) return element.textContent.trim();
  }
  return "Table";
}

// A column header that sorts is a link (a sorted list has an address); Space sorts too, as on
// the buttons that sortable headers often are, instead of scrolling the page.
function sortWithSpace() {
  document.addEventListener("keydown", function (event) {
    var link = event.target.closest && event.target.closest("thead th a[href]");
    if (link && event.key === " ") {
      event.preventDefault();
      link.click();
    }
  });
}

document.addEventListener("DOMContentLoaded", loadSections);
document.addEventListener("DOMContentLoaded", focusErrors);
document.addEventListener("DOMContentLoaded", autoRefresh);
document.addEventListener("DOMContentLoaded", confirmActions);
document.addEventListener("DOMContentLoaded", sortWithSpace);
document.addEventListener("DOMContentLoaded", scrollableTables);
window.addEventListener("resize", scrollableTables);
