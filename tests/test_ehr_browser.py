"""The EHR pages in headless Chromium against ``caredeck serve --demo``: an administrator
edits the sandbox EHR's mapping (an invalid edit first), saves it and reads the diff, and
makes a bulk update through its preview; the demo patient answers the questionnaire in
Spanish on a phone-sized screen, and the answers reach the sandbox EHR through the real job,
mapped by the new version."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import pytest
from browser_support import ARTIFACTS, CHROMIUM_ARGS, chromium_or_skip, demo_server, sign_in

DEMO_MRN = "DEMO-0001"  # the demo patient user's record, linked to the sandbox EHR (SBX-1001)
SYMPTOMS = "Tos y fiebre desde el <lunes>"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``caredeck serve --demo``, its sandbox organization pointing at this very server."""
    with demo_server(tmp_path_factory.mktemp("instance"), sandbox_ehr=True) as server:
        yield server


@pytest.mark.browser
def test_mapping_editor_and_spanish_questionnaire_in_chromium(demo):
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_or_skip()
    base, credentials = demo["base"], demo["credentials"]
    hosts, problems = set(), []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:

            def signed_in(role, width=1280):
                page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
                page.on("request", lambda r: hosts.add(urlsplit(r.url).hostname))
                page.on("console", lambda m: m.type == "error" and problems.append(m.text))
                email = f"{role}@caredeck.local"
                sign_in(page, base, email, credentials[email])
                return page

            # The administrator: an invalid edit is named next to its row and not saved.
            admin = signed_in("admin")
            admin.click('nav >> text="EHR"')
            expect(admin.locator("h1")).to_have_text("EHR mappings")
            admin.click("text=Sandbox EHR (inside Caredeck)")
            expect(admin.locator("h1")).to_have_text("Sandbox EHR (inside Caredeck) mapping")
            admin.fill("#map-symptoms-field", "CHIEF_COMPLAINT")
            admin.select_option("#map-symptoms-kind", "upper")
            admin.click("button[value=validate]")
            expect(admin.locator("#row-symptoms-error")).to_contain_text("has no field")
            expect(admin.locator(".error-summary")).to_be_focused()  # keyboard users start there
            expect(admin.locator(".error-summary a[href='#row-symptoms']")).to_be_visible()
            expect(admin.locator("#map-symptoms-field")).to_have_value("CHIEF_COMPLAINT")
            expect(admin.locator("#map-symptoms-kind")).to_have_value("upper")
            expect(admin.locator("table.ehr-versions tbody tr")).to_have_count(1)

            # Corrected and validated from the keyboard (Enter validates; it never saves),
            # then saved as version 2 with a note.
            admin.fill("#map-symptoms-field", "symptoms")
            admin.locator("#map-symptoms-field").press("Enter")
            expect(admin.locator("#mapping-valid")).to_contain_text("not saved yet")
            expect(admin.locator("table.ehr-versions tbody tr")).to_have_count(1)
            admin.fill("#mapping-note", "Symptoms in capitals for the triage desk")
            admin.click("button[value=save]")
            expect(admin.locator(".notice")).to_contain_text("Saved as version 2")
            versions = admin.locator("table.ehr-versions tbody tr")
            expect(versions).to_have_count(2)
            expect(versions.first).to_contain_text("Symptoms in capitals for the triage desk")
            admin.screenshot(path=str(ARTIFACTS / "ehr-mapping-editor.png"), full_page=True)

            # The diff of the two versions, as a table.
            versions.first.locator("a", has_text="Changes").click()
            expect(admin.locator("h1")).to_contain_text("version 1 → version 2")
            row = admin.locator("table.ehr-diff tbody tr")
            expect(row).to_have_count(1)
            expect(row.locator("td.before")).to_have_text("symptoms at symptoms")
            expect(row.locator("td.after")).to_have_text("symptoms at symptoms, upper case")
            admin.screenshot(path=str(ARTIFACTS / "ehr-mapping-diff.png"), full_page=True)

            # Every page fits a phone: no sideways scrolling (wide tables scroll in their box).
            phone = signed_in("admin", width=390)
            for path in (
                "/ehr/mappings",
                "/ehr/mappings/sandbox",
                "/ehr/mappings/sandbox/versions/1",
                "/ehr/mappings/sandbox/diff?from=1&to=2",
                "/ehr/organizations",
                "/ehr/organizations/1",
                "/ehr/bulk",
                "/ehr/questions",
                "/ehr/sandbox",
                f"/patients/{DEMO_MRN}/questionnaire",
            ):
                phone.goto(f"{base}{path}")
                expect(phone.locator("h1")).to_be_visible()
                width = phone.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
            phone.goto(f"{base}/ehr/mappings/sandbox")
            expect(phone.locator("#map-symptoms-field")).to_be_visible()
            phone.screenshot(path=str(ARTIFACTS / "ehr-mapping-editor-390.png"), full_page=True)

            # A bulk update: the preview lists each patient before and after; confirming
            # (the browser asks first) applies exactly that.
            admin.click(".subnav >> text=Bulk update")
            admin.select_option("#bulk-organization_id", label="Caredeck Demo Clinic (sandbox EHR)")
            admin.fill("#bulk-provider", "Dr. Amara Osei")
            admin.fill("#bulk-new_provider", "Dr. Rivera")
            admin.click("main button >> text=Preview")
            preview = admin.locator("#bulk-preview tbody tr")
            expect(preview).to_have_count(2)  # DEMO-0001 and DEMO-0002
            expect(preview.first.locator("td.before")).to_have_text("Dr. Amara Osei")
            expect(preview.first.locator("td.after")).to_have_text("Dr. Rivera")
            admin.once("dialog", lambda dialog: dialog.accept())
            admin.click("main button >> text=Confirm and apply 2 changes")
            expect(admin.locator(".notice")).to_contain_text("2 of 2 patients changed")

            # The patient, on a phone, answers in Spanish.
            patient = signed_in("patient", width=390)
            patient.click('nav >> text="Questionnaire"')
            expect(patient.locator("h1")).to_have_text("Questionnaire")
            patient.click(".language-switch >> text=Español")
            expect(patient.locator("h1")).to_have_text("Cuestionario")
            patient.click("main button[type=submit]")  # the required question is empty
            expect(patient.locator("#answer-symptoms-error")).to_be_visible()
            expect(patient.locator("h1")).to_have_text("Cuestionario")  # still in Spanish
            patient.fill("#answer-symptoms", SYMPTOMS)
            patient.fill("#answer-allergies", "Penicilina")
            patient.click("main button[type=submit]")
            expect(patient.locator("h1")).to_have_text("Gracias, sus respuestas están guardadas")
            expect(patient.locator("table.ehr-deliveries tbody tr").first).to_be_visible()
            width = patient.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the confirmation is {width} px wide on a 390 px screen"
            patient.screenshot(path=str(ARTIFACTS / "ehr-questionnaire-es-390.png"), full_page=True)

            # The sandbox EHR received it, mapped by version 2 (upper case), shown as text.
            nurse = signed_in("nurse")
            nurse.goto(f"{base}/ehr/sandbox")
            receipt = nurse.locator("li.ehr-receipt", has_text="symptoms")
            for _ in range(60):  # the embedded worker sends within a moment
                if receipt.count():
                    break
                time.sleep(0.5)
                nurse.reload()
            expect(receipt.first.locator("pre.ehr-payload")).to_contain_text(SYMPTOMS.upper())
            expect(receipt.first).to_contain_text("SBX-1001")
            expect(nurse.locator("pre.ehr-payload lunes")).to_have_count(0)  # text, not markup
            nurse.screenshot(path=str(ARTIFACTS / "ehr-sandbox.png"), full_page=True)

            # ...and the chart shows the deliveries sent, with the mapping version they used.
            nurse.goto(f"{base}/patients/{DEMO_MRN}")
            section = nurse.locator("[data-section-url*='sections/ehr']")
            rows = section.locator("table.ehr-deliveries tbody tr")
            expect(rows.first).to_be_visible()
            for _ in range(60):
                states = rows.locator(".ehr-state").all_inner_texts()
                if states and all(state == "Sent" for state in states):
                    break
                time.sleep(0.5)
                nurse.reload()
            assert states and all(state == "Sent" for state in states), states
            expect(section.locator("td", has_text=re.compile(r"^version 2$")).first).to_be_visible()
            expect(section.locator("a", has_text="Questionnaire")).to_be_visible()
            expect(section).to_contain_text("primary care physician Dr. Rivera")  # the bulk one
            nurse.screenshot(path=str(ARTIFACTS / "ehr-chart.png"), full_page=True)
        finally:
            browser.close()
    assert hosts == {"127.0.0.1"}, f"requests left the machine: {hosts}"
    # The invalid mapping and the empty required answer are answered 422 on purpose;
    # anything else in the console is a defect.
    expected = "status of 422 (UNPROCESSABLE ENTITY)"
    assert [p for p in problems if not p.endswith(expected)] == []
