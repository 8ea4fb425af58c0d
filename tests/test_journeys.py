"""One journey per role through every dashboard page it can reach, in headless Chromium
against ``caredeck serve --demo`` (issue 10).

Which pages there are comes from the app's URL map: every GET route outside ``/api/``, less
the few in ``NOT_PAGES``. Each journey signs in with the keyboard, fills and submits its
role's main forms with the keyboard alone, then follows every link and form action of the
pages it sees until each page it may open has been checked; at the end, a page of its role
that no journey reached fails the test. On each page:

- it answers 200 and has a heading; screenshots at 1280 and 390 px go to artifacts/journeys/;
- no console error and no uncaught exception; no request leaves 127.0.0.1 (the context's
  route handler records every request's host and aborts any other);
- Tab visits every visible interactive element in document order (from wherever the page
  puts the focus, round to the top), no positive tabindex, and each one shows a focus ring
  with at least 3:1 contrast against what surrounds it; every field has a label, the page a
  title and a language;
- at 390 px the document does not scroll sideways (wide tables scroll in their own box) and
  the heading and the page's buttons stay on screen.

Then every page of another role answers 403, and a patient's own-record pages answer 404 for
another patient's record; a visitor who is not signed in is sent to sign in from every page
that is not public.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from browser_support import ARTIFACTS, CHROMIUM_ARGS, chromium_or_skip, demo_server
from werkzeug.exceptions import HTTPException

ROLES = ("admin", "doctor", "nurse", "patient")
OWN_MRN = "DEMO-0001"  # the demo patient user's record
OTHER_MRN = "DEMO-0002"
FULL_CHART_MRN = "7792223"  # a sample patient with admissions, labs and two medications
SHOTS = ARTIFACTS / "journeys"
WIDE, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
# GET routes outside /api/ that are not pages a person browses to, and why.
NOT_PAGES = {
    "static": "files",
    "health.healthz": "a probe's JSON",
    "health.readyz": "a probe's JSON",
    "auth_pages.audit_export": "a CSV download",
    "monitoring_pages.worklist_csv": "a CSV download",
    "core_pages.chart_section": "a fragment of the chart page, checked as part of it",
    "ehr_sandbox.patient": "the sandbox EHR's own API",
    "reporting_reports_pages.report_link": "opened from an email, with a signed token",
    "reporting_reports_pages.unsubscribe_confirm": "opened from an email, with a signed token",
}
# Pages no link leads to in the demo, opened by their address: which, and why.
BY_ADDRESS = {
    # The chart links it only when it holds more interactions than the chart shows.
    "interactions_pages.history_page": f"/patients/{OWN_MRN}/interactions",
}
# Values for route parameters when asking for a page that must be refused: access is
# decided before the view runs, so any well-formed value will do.
REFUSED_ARGUMENTS = {"mrn": OWN_MRN, "connector_name": "sandbox"}

# Each focused element's index (given by FOCUSABLE below), and its focus outline's contrast
# (outline or box-shadow ring) with what surrounds it: WCAG asks 3:1; 0 when there is none.
RECORD_FOCUS = """
window.journeyFocus = [];
const channels = (color) => (color.match(/[\\d.]+/g) || []).map(Number);
const luminance = (color) => {
  const [r, g, b] = channels(color).map((v) => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
// The outline is drawn just outside the element: on the first opaque background around it.
const backdrop = (element) => {
  for (let e = element.parentElement; e; e = e.parentElement) {
    const color = getComputedStyle(e).backgroundColor;
    const [, , , alpha] = channels(color);
    if (alpha === undefined || alpha > 0) return color;
  }
  return "rgb(255, 255, 255)";
};
const contrast = (first, second) => {
  const [a, b] = [luminance(first), luminance(second)];
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
};
document.addEventListener("focusin", (event) => {
  const element = event.target;
  const style = getComputedStyle(element);
  const around = backdrop(element);
  const rings = [];  // an outline, and a box-shadow ring (its first colour)
  if (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2) {
    rings.push(style.outlineColor);
  }
  if (style.boxShadow !== "none") rings.push(style.boxShadow.match(/rgba?\\([^)]*\\)/)[0]);
  window.journeyFocus.push({
    index: element.dataset.journey === undefined ? -1 : Number(element.dataset.journey),
    contrast: Math.max(0, ...rings.map((ring) => contrast(ring, around))),
  });
}, true);
"""
# Every element Tab should stop at, in document order, numbered; a radio group is one stop.
FOCUSABLE = """() => {
  const candidates = [...document.querySelectorAll(
      "a[href], button, input, select, textarea, summary, [tabindex]")]
    .filter((e) => !e.disabled && e.tabIndex >= 0 && e.type !== "hidden")
    .filter((e) => e.checkVisibility({checkVisibilityCSS: true}));
  // A radio group is one stop: its checked button, else its first.
  const group = (e) => `${e.form ? e.form.action : ""} ${e.name}`;
  const radioStop = new Map();
  for (const e of candidates.filter((c) => c.type === "radio")) {
    if (!radioStop.has(group(e)) || e.checked) radioStop.set(group(e), e);
  }
  const stops = candidates.filter((e) => e.type !== "radio" || radioStop.get(group(e)) === e);
  stops.forEach((element, index) => { element.dataset.journey = index; });
  window.journeyFocus = [];
  const active = document.activeElement;
  const name = (e) => (e.id || e.name || e.textContent || "").trim().slice(0, 40);
  const segmented = ["date", "time", "datetime-local", "month", "week"];
  return {
    names: stops.map((e) => `${e.tagName.toLowerCase()} ${name(e)}`),
    // Where the next Tab goes: the first stop after the focused element (the top if none).
    next: active === document.body ? 0 : stops.filter((e) => e === active
      || active.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_PRECEDING).length,
    positive: stops.filter((e) => e.tabIndex > 0).length,
    segmented: stops.filter((e) => segmented.includes(e.type)).length,
  };
}"""
# At 390 px: the heading and the buttons that stick out of the screen, in tables too (a row's
# actions must not hide at the far end of a sideways scroll).
OFF_SCREEN = """(width) => [...document.querySelectorAll(
    "main h1, main button, main .button, main input[type=submit]")]
  .filter((e) => e.checkVisibility({checkVisibilityCSS: true}))
  .filter((e) => { const r = e.getBoundingClientRect(); return r.left < 0 || r.right > width; })
  .map((e) => `${e.tagName.toLowerCase()} ${e.textContent.trim().slice(0, 40)}`)"""
# What a screen reader announces: the page's title, its language, each control's label.
UNNAMED = """() => ({
  title: document.title,
  lang: document.documentElement.lang,
  unlabelled: [...document.querySelectorAll("input, select, textarea")]
    .filter((e) => !["hidden", "submit", "button"].includes(e.type))
    .filter((e) => !e.labels.length && !e.getAttribute("aria-label")
      && !e.getAttribute("aria-labelledby"))
    .map((e) => e.id || e.name),
})"""
NEXT_FRAME = "() => new Promise((resolve) => requestAnimationFrame(() => resolve()))"
LINKS = """() => [...document.querySelectorAll("a[href], form[method=post i][action]")]
  .map((e) => new URL(e.getAttribute("href") || e.getAttribute("action"), document.baseURI).href)"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with demo_server(tmp_path_factory.mktemp("instance"), sandbox_ehr=True) as server:
        yield server


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The URL map and access declarations of the app ``caredeck serve`` builds (the same
    installed plugins), built here only to read them."""
    from core.app import create_app

    folder = tmp_path_factory.mktemp("site")
    app = create_app(
        {
            "INSTANCE_PATH": str(folder),
            "DATABASE_URL": f"sqlite:///{folder}/unused.db",
            "AMQP_URL": "memory://",
            "DRAMATIQ_URL": "stub://",
            "REDIS_URL": "memory://",
            "SECRET_KEY": "only-to-read-the-url-map-0123456789-0123456789",
        }
    )
    yield Site(app)
    app.extensions["caredeck"].jobs.stop()


class Site:
    def __init__(self, app):
        from core.auth.access import PUBLIC, declared_access

        self.adapter = app.url_map.bind("127.0.0.1")
        self.pages = {}  # endpoint: (rule, roles or PUBLIC)
        for rule in app.url_map.iter_rules():
            if "GET" not in rule.methods or rule.rule.startswith("/api/"):
                continue
            if rule.endpoint in NOT_PAGES:
                continue
            access = declared_access(app.view_functions[rule.endpoint], "GET")
            self.pages[rule.endpoint] = (rule, access)
        self.public = PUBLIC

    def endpoint(self, url: str) -> str | None:
        """The page endpoint a URL of the demo server opens, or None (not a page)."""
        try:
            endpoint, _ = self.adapter.match(urlsplit(url).path, method="GET")
        except HTTPException:
            return None
        return endpoint if endpoint in self.pages else None

    def reachable(self, role: str) -> set[str]:
        return {
            e for e, (_, access) in self.pages.items() if access != self.public and role in access
        }

    def refused(self, role: str | None) -> list[str]:
        """A URL of each page that ``role`` (None: not signed in) must not open."""
        return [
            self.url_for_refusal(endpoint)
            for endpoint, (_, access) in sorted(self.pages.items())
            if access != self.public and role not in access
        ]

    def url_for_refusal(self, endpoint: str) -> str:
        rule = self.pages[endpoint][0]
        arguments = {name: REFUSED_ARGUMENTS.get(name, 1) for name in rule.arguments}
        return self.adapter.build(endpoint, arguments)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Journey:
    """One role's browser context: records hosts and console errors, checks pages."""

    def __init__(self, browser, demo, site, role: str):
        self.base, self.site, self.role = demo["base"], site, role
        self.email = f"{role}@caredeck.local"
        self.password = demo["credentials"].get(self.email)
        self.hosts: set[str] = set()
        self.problems: list[str] = []
        self.checked: dict[str, str] = {}  # endpoint: the URL it was checked at
        self.seen: list[str] = []  # links and form actions of the pages checked, in order
        self.context = browser.new_context(viewport=WIDE)
        self.context.route("**/*", self._route)
        self.context.add_init_script(RECORD_FOCUS)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"{self.url}: {error}"))

    @property
    def url(self) -> str:
        return self.page.url

    def _route(self, route):
        host = urlsplit(route.request.url).hostname
        self.hosts.add(host)
        if host == "127.0.0.1":
            route.continue_()
        else:
            route.abort()

    def _console(self, message):
        if message.type == "error":
            self.problems.append(f"{self.url}: {message.text}")

    # Keyboard -------------------------------------------------------------------------

    def tab_to(self, selector: str, limit: int = 300) -> None:
        """Press Tab until the focus is on ``selector`` (the way a keyboard user gets there)."""
        target = self.page.locator(selector).first
        for _ in range(limit):
            if target.evaluate("(element) => element === document.activeElement"):
                return
            self.page.keyboard.press("Tab")
        raise AssertionError(f"{self.url}: Tab never reached {selector}")

    def type_into(self, selector: str, text: str) -> None:
        self.tab_to(selector)
        self.page.keyboard.type(text)

    def press_on(self, selector: str, key: str = "Enter") -> None:
        self.tab_to(selector)
        with self.page.expect_navigation(timeout=10_000):
            self.page.keyboard.press(key)

    def sign_in(self) -> None:
        self.page.goto(f"{self.base}/login")
        self.type_into("#email", self.email)
        self.type_into("#password", self.password)
        with self.page.expect_navigation(timeout=10_000):
            self.page.keyboard.press("Enter")
        assert "/login" not in self.url, f"{self.role} could not sign in with the keyboard"
        # The first Tab reaches the skip link, which takes the focus past the navigation.
        self.page.keyboard.press("Tab")
        self.page.keyboard.press("Enter")
        assert self.page.evaluate("document.activeElement.id") == "main"

    # Page checks ----------------------------------------------------------------------

    def visit(self, url: str, again: bool = False) -> None:
        response = self.page.goto(url)
        assert response.status == 200, f"{self.role}: {url} answered {response.status}"
        self.check(again)
        # A page that redirects (a patient's "/" goes to their chart) counts as checked.
        self.checked.setdefault(self.site.endpoint(url), self.url)

    def check(self, again: bool = False) -> None:
        """Check the page the browser shows now (once per endpoint, unless ``again``)."""
        page = self.page
        endpoint = self.site.endpoint(self.url)
        assert endpoint is not None, f"{self.url} is not a page"
        if endpoint in self.checked and not again:
            return
        self.checked.setdefault(endpoint, self.url)
        # Chart sections load on their own after the page: wait for every one.
        page.wait_for_function(
            """() => [...document.querySelectorAll("[data-section-url]")]
                .every((box) => box.childElementCount || box.classList.contains("failed"))"""
        )
        assert page.locator("h1").first.is_visible(), f"{self.url} has no heading"
        named = page.evaluate(UNNAMED)
        assert named["lang"] and named["title"] != "Caredeck · Caredeck", (self.url, named)
        assert named["unlabelled"] == [], f"{self.url}: controls without a label: {named}"
        name = f"{self.role}-{endpoint.replace('.', '-')}{'-again' if again else ''}"
        self.seen.extend(page.evaluate(LINKS))
        self._check_keyboard()
        self._screenshot(f"{name}-1280.png")
        page.set_viewport_size(PHONE)
        page.evaluate(NEXT_FRAME)  # the page's resize handlers have run
        try:
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{self.url} is {width} px wide on a 390 px screen"
            off_screen = page.evaluate(OFF_SCREEN, PHONE["width"])
            assert off_screen == [], f"{self.url} at 390 px: off screen: {off_screen}"
            self._check_keyboard()
            self._screenshot(f"{name}-390.png")
        finally:
            page.set_viewport_size(WIDE)
            page.evaluate(NEXT_FRAME)

    def _screenshot(self, name: str) -> None:
        """The whole page, down to 3000 px: enough to judge a layout, and long tables (the
        source-data page) would take seconds more to render."""
        width = self.page.viewport_size["width"]
        height = min(self.page.evaluate("document.documentElement.scrollHeight"), 3000)
        clip = {"x": 0, "y": 0, "width": width, "height": height}
        self.page.screenshot(path=str(SHOTS / name), full_page=True, clip=clip)

    def _check_keyboard(self) -> None:
        """Tab from where the page starts goes through every stop in document order (from
        the top again after the last), each with a visible focus."""
        page = self.page
        where = f"{self.url} at {page.viewport_size['width']} px"
        stops = page.evaluate(FOCUSABLE)
        names, count = stops["names"], len(stops["names"])
        assert stops["positive"] == 0, f"{where}: a positive tabindex reorders Tab"
        # Date and time inputs take a Tab per part (day, month, year...) before letting go.
        for _ in range(count + 6 * stops["segmented"] + 2):
            page.keyboard.press("Tab")
        visits = page.evaluate("window.journeyFocus")
        order = [v["index"] for i, v in enumerate(visits) if i == 0 or v != visits[i - 1]]
        start = stops["next"]
        expected = [*range(start, count), *range(0, start)]
        # Leaving the last stop, the focus goes to the browser once, then to the top again.
        got = [index for index in order if index >= 0][:count]
        assert got == expected, (
            f"{where}: Tab order differs from the document's.\n"
            f"expected: {[names[i] for i in expected]}\n"
            f"got:      {[names[i] for i in got]}"
        )
        unseen = sorted({names[v["index"]] for v in visits if v["index"] >= 0} ^ set(names))
        assert unseen == [], f"{where}: Tab never reaches {unseen}"
        faint = sorted(
            {
                f"{names[v['index']]} ({v['contrast']:.1f}:1)"
                for v in visits
                if v["index"] >= 0 and v["contrast"] < 3
            }
        )
        assert faint == [], f"{where}: no focus outline with 3:1 contrast on {faint}"

    def crawl(self) -> None:
        """Follow links and form actions until every page they lead to is checked."""
        reachable = self.site.reachable(self.role)
        self.seen.extend(self.base + path for e, path in BY_ADDRESS.items() if e in reachable)
        position = 0
        while position < len(self.seen):
            url = self.seen[position]
            position += 1
            if urlsplit(url).hostname != "127.0.0.1":
                continue
            endpoint = self.site.endpoint(url)
            if endpoint is None or endpoint in self.checked:
                continue
            self.visit(url)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def journey(request, browser, demo, site):
    made = Journey(browser, demo, site, request.param)
    yield made
    made.close()


# What each role does with the keyboard alone before browsing everything ----------------


def answer_the_questionnaire(journey) -> None:
    """Every role may answer DEMO-0001's questionnaire (the patient, their own)."""
    page = journey.page
    page.goto(f"{journey.base}/patients/{OWN_MRN}/questionnaire")
    journey.check()
    journey.type_into("#answer-symptoms", f"Typed by the {journey.role}: cough since Monday")
    journey.press_on("main button[type=submit]")
    assert page.locator("h1").inner_text().startswith("Thank you"), page.locator("h1").inner_text()
    # While a delivery is pending the page reloads itself every 10 s, which would cut the
    # checks short: wait for the sandbox EHR (this same server) to have them all.
    for _ in range(60):
        if page.locator("[data-auto-refresh]").count() == 0:
            break
        time.sleep(0.5)
        page.reload()
    assert page.locator(".ehr-state-sent").count() >= 1
    journey.check()


def admin_keyboard(journey) -> None:
    page = journey.page
    page.goto(f"{journey.base}/admin/users")
    journey.type_into("#status", "active")  # a closed select picks by typing
    journey.press_on("main form.filters button[type=submit]", "Space")
    assert "status=active" in journey.url
    assert page.locator("tbody tr").count() == 4

    # A new mapping version, saved and compared with the keyboard.
    page.goto(f"{journey.base}/ehr/mappings/sandbox")
    journey.type_into("#map-symptoms-kind", "upper")
    journey.type_into("#mapping-note", "Symptoms in capitals, typed")
    journey.press_on("button[value=save]")
    assert "Saved as version 2" in page.locator(".notice").inner_text()
    journey.press_on("form[action$='/diff'] button[type=submit]")  # versions 2 and 1
    assert "version 1 → version 2" in page.locator("h1").inner_text()
    journey.check()


def doctor_keyboard(journey) -> None:
    page = journey.page
    page.goto(f"{journey.base}/patients/{OWN_MRN}")
    journey.check()
    section = "[data-section-url*=interactions]"
    journey.tab_to(f"{section} details.interaction-new > summary")
    page.keyboard.press("Enter")  # opens the form
    form = f"{section} details.interaction-new form"
    journey.type_into(f"{form} select[name=kind]", "visit")
    journey.type_into(f"{form} [name=summary]", "Typed with the keyboard only")
    journey.tab_to(f"{form} input[name=outcome]")
    page.keyboard.press("Space")  # the first choice of the group
    journey.press_on(f"{form} button[type=submit]")
    assert "The interaction is recorded." in page.locator(".notice").inner_text()


def nurse_keyboard(journey) -> None:
    page = journey.page
    page.goto(f"{journey.base}/")
    journey.type_into("main input[name=q]", "Lindqvist")
    journey.press_on("main input[name=q]")  # Enter in the field searches
    assert page.locator(f"main a:text-is('{OWN_MRN}')").count() == 1

    # The worklist as of its data, sorted from the keyboard by a column header.
    page.goto(f"{journey.base}/monitoring/")
    journey.press_on("main a:has-text('See the worklist as of the latest data')")
    journey.press_on("main th a:has-text('Department')")
    assert page.locator("th[aria-sort]").inner_text().startswith("Department")
    journey.press_on("main th a:has-text('Room')", "Space")
    assert page.locator("th[aria-sort]").inner_text().startswith("Room")
    assert page.locator("tbody tr").count() > 1

    page.goto(f"{journey.base}/reports/subscriptions")
    journey.type_into("#field-weekday", "friday")
    journey.type_into("#field-time", "0730AM")
    journey.type_into("#field-timezone", "Europe/Berlin")
    journey.press_on("main form button[type=submit]:has-text('Subscribe')")
    assert "Friday" in page.locator("ul.subscriptions").inner_text()


KEYBOARD = {"admin": admin_keyboard, "doctor": doctor_keyboard, "nurse": nurse_keyboard}


@pytest.mark.browser
@pytest.mark.parametrize("journey", ROLES, indirect=True)
def test_journey(journey, site):
    journey.sign_in()
    journey.check()  # where signing in leads
    answer_the_questionnaire(journey)
    if journey.role in KEYBOARD:
        KEYBOARD[journey.role](journey)
        # Staff see every chart section filled on this sample patient's chart.
        journey.visit(f"{journey.base}/patients/{FULL_CHART_MRN}", again=True)
        text = journey.page.locator("main").inner_text()
        assert "Admissions" in text and "Heparin" in text, text[:500]
    journey.crawl()

    role = journey.role
    missed = sorted(journey.site.reachable(role) - set(journey.checked))
    assert missed == [], f"{role}: no link leads to {missed}"
    assert journey.hosts == {"127.0.0.1"}, f"requests left the machine: {journey.hosts}"
    assert journey.problems == []

    for url in site.refused(role):
        response = journey.context.request.get(f"{journey.base}{url}", max_redirects=0)
        assert response.status == 403, f"{role} opened {url}: {response.status}"
    if role == "patient":
        for path in ("", "/interactions", "/questionnaire"):
            url = f"{journey.base}/patients/{OTHER_MRN}{path}"
            response = journey.context.request.get(url, max_redirects=0)
            assert response.status == 404, f"the patient opened {url}: {response.status}"
    print(f"{role}: {len(journey.checked)} pages: {sorted(journey.checked)}")


@pytest.mark.browser
def test_a_visitor_who_is_not_signed_in(browser, demo, site):
    """The public pages pass the same checks; every other page sends the visitor to sign in."""
    journey = Journey(browser, demo, site, "anonymous")
    try:
        public = sorted(e for e, (_, access) in site.pages.items() if access == site.public)
        for endpoint in public:
            journey.visit(f"{journey.base}{site.adapter.build(endpoint)}")
        assert sorted(journey.checked) == public
        assert journey.hosts == {"127.0.0.1"}
        assert journey.problems == []
        for path in site.refused(None):
            url = journey.base + path
            response = journey.context.request.get(url, max_redirects=0)
            assert response.status == 302, f"{url} answered {response.status}"
            assert urlsplit(response.headers["location"]).path == "/login"
    finally:
        journey.close()
