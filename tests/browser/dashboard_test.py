"""The web dashboard in a real browser: Debian's chromium, driven through
chromium-driver by selenium 4.51.0, against a real `tether serve`.

Run by `tests/it/dashboard.rs`, which starts the server and passes, in the
environment: TETHER_URL, TETHER_ADMIN_TOKEN, TETHER_USER_TOKEN (user `alice`),
TETHER_USER, TETHER_OTHER_ENV (the name of an environment alice does not own),
TETHER_TEMPLATE (a thread-scoped template), TETHER_PENDING_REMOVAL (the id of a deleted
environment whose removal keeps failing) and TETHER_SCREENSHOTS (where each page's
screenshot goes). Exits non-zero, with the failing step and a screenshot of it, if
anything on the list below does not happen.

Covered: a wrong token is refused and a right one signs in; an admin sees every
environment, the providers with their grants, the tokens (making one shows its
secret once, revoking removes it), a pending removal (tried again, then dropped) and
the audit log; a user token sees only its own
environments and no admin pages; an environment created from the form reaches
`running` without a reload (over /ws/events), its live log shows lines, the thread
console's echo comes back, and stop and delete show in the list as they happen.
"""

import os
import shutil
import sys
import tempfile
import time
import traceback

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["TETHER_URL"].rstrip("/")
ADMIN = os.environ["TETHER_ADMIN_TOKEN"]
USER_TOKEN = os.environ["TETHER_USER_TOKEN"]
USER = os.environ.get("TETHER_USER", "alice")
OTHER_ENV = os.environ["TETHER_OTHER_ENV"]
TEMPLATE = os.environ.get("TETHER_TEMPLATE")
# A deleted environment whose resource the host cannot remove (its removal keeps failing).
REMOVAL = os.environ.get("TETHER_PENDING_REMOVAL")
SHOTS = os.environ.get("TETHER_SCREENSHOTS", "target/screenshots")
CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TETHER_CHROMEDRIVER", "/usr/bin/chromedriver")

# How long anything may take to show: a start spawns a runtime on a loaded machine.
WAIT = 60


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # Console errors (a CSP violation, a failed module import) are read back below.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Page:
    """One browser session on the dashboard, with the waits the steps share."""

    def __init__(self, driver):
        self.d = driver

    def wait(self, what, condition, timeout=WAIT):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(condition)
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None

    def css(self, selector, what=None, timeout=WAIT):
        return self.wait(what or selector, EC.visibility_of_element_located((By.CSS_SELECTOR, selector)), timeout)

    def gone(self, selector, what=None):
        self.wait(what or f"{selector} to go", EC.invisibility_of_element_located((By.CSS_SELECTOR, selector)))

    def text_in(self, selector, text, what=None):
        self.wait(what or f"{text!r} in {selector}", EC.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text))

    def click(self, selector):
        self.wait(f"{selector} to be clickable", EC.element_to_be_clickable((By.CSS_SELECTOR, selector))).click()

    def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        # The whole page, not just the window: long tables and the log included.
        height = self.d.execute_script("return Math.max(document.body.scrollHeight, 1000)")
        self.d.set_window_size(1440, min(int(height) + 40, 3000))
        self.d.execute_script("window.scrollTo(0, 0)")
        self.d.save_screenshot(os.path.join(SHOTS, f"{name}.png"))
        self.d.set_window_size(1440, 1000)

    def go(self, hash_):
        self.d.execute_script("location.hash = arguments[0]", hash_)

    def mark(self):
        """Tags the loaded document: the tag survives until something reloads the page."""
        self.d.execute_script("window.__tetherNoReload = 'kept'")

    def assert_not_reloaded(self):
        kept = self.d.execute_script("return window.__tetherNoReload")
        assert kept == "kept", "the page was reloaded"

    def sign_in(self, token):
        self.d.get(URL + "/")
        field = self.css("#token")
        field.clear()
        field.send_keys(token)
        self.click("#signin-submit")

    def sign_out(self):
        self.click("#signout")
        self.css("#token", "the sign-in page after signing out")

    def env_row(self, name):
        return f'#env-table tr[data-name="{name}"]'

    def console_errors(self):
        return [
            e["message"]
            for e in self.d.get_log("browser")
            if e.get("level") == "SEVERE" and "favicon" not in e["message"]
        ]


def step(name):
    print(f"--- {name}", flush=True)


def admin_pages(p):
    step("the sign-in page, and a wrong token refused")
    p.d.get(URL + "/")
    p.css("#token")
    assert "token" not in p.d.current_url
    p.shot("01-sign-in")
    p.sign_in("tth_" + "0" * 64)
    p.css("#signin-error", "the wrong token's error")
    err = p.d.find_element(By.CSS_SELECTOR, "#signin-error").text
    assert "unauthorized" in err, err
    p.shot("02-sign-in-refused")
    p.d.get_log("browser")  # the refused whoami's 401 is expected: not a page error

    step("an admin signs in and sees every user's environments, live")
    p.sign_in(ADMIN)
    p.text_in("#who-user", "admin")
    p.wait("the live list to connect", lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "open")
    p.css(p.env_row(OTHER_ENV), f"{OTHER_ENV} in the admin's list")
    assert ADMIN not in p.d.current_url, "the token is in the URL"
    assert p.d.execute_script("return sessionStorage.getItem('tether.dashboard.token')") == ADMIN
    p.shot("03-environments-admin")

    step("the create form, from a provider and from a template")
    p.click("#new-env")
    p.css("#create-provider")
    p.wait("the provider select to list local-process",
           lambda d: d.find_elements(By.CSS_SELECTOR, '#create-provider option[value="local-process"]'))
    p.click("#add-config")
    p.shot("04-create-from-provider")
    if TEMPLATE:
        p.click('.tab[data-mode="template"]')
        p.wait("the template select", lambda d: d.find_elements(By.CSS_SELECTOR, f'#template option[value="{TEMPLATE}"]'))
        p.shot("05-create-from-template")

    step("providers, with what each asks for and is granted")
    p.go("#/providers")
    p.css('.provider[data-provider="local-process"]', "local-process's card")
    card = p.d.find_element(By.CSS_SELECTOR, '.provider[data-provider="local-process"]')
    text = card.text.lower()  # headings are drawn in capitals
    assert "granted" in text and "asks for" in text, card.text
    assert "runtime" in text, card.text  # it asks to spawn `tether runtime`
    p.shot("06-providers")

    step("tokens: the list, a new token's secret shown once, a revoke")
    p.go("#/tokens")
    p.css("#token-table", "the token list")
    p.text_in("#token-table", USER)
    user_field = p.css("#token-user")
    user_field.send_keys("carol")
    p.d.find_element(By.CSS_SELECTOR, '[data-scope="envs:delete"]').click()  # narrow it
    p.d.find_element(By.ID, "token-note").send_keys("made in the browser test")
    p.click("#token-submit")
    secret = p.css("#token-secret", "the new token's secret").text
    assert secret.startswith("tth_") and len(secret) == 68, secret
    p.text_in("#token-table", "carol")
    row = p.d.find_element(By.XPATH, "//table[@id='token-table']//tr[td[2][normalize-space()='carol']]")
    assert "envs:delete" not in row.text, row.text
    p.shot("07-tokens-created")
    token_id = row.get_attribute("data-token")
    row.find_element(By.CSS_SELECTOR, '[data-action="revoke"]').click()
    p.click("dialog [data-confirm]")
    p.gone(f'#token-table tr[data-token="{token_id}"]', "carol's revoked token to leave the list")
    # Another page and back: the secret is not shown again.
    p.go("#/environments")
    p.css("#env-list")
    p.go("#/tokens")
    p.css("#token-table")
    assert not p.d.find_elements(By.ID, "token-secret"), "the secret was shown twice"

    if REMOVAL:
        step("removals: a pending one with its error, tried now, then dropped")
        p.go("#/removals")
        row_css = f'#removal-table tr[data-removal="{REMOVAL}"]'
        row = p.css(row_css, "the pending removal")
        attempts = int(row.find_element(By.CSS_SELECTOR, '[data-field="attempts"]').text)
        assert row.find_element(By.CSS_SELECTOR, '[data-field="lastError"]').text, row.text
        p.shot("07b-removals")
        row.find_element(By.CSS_SELECTOR, '[data-action="retry"]').click()
        # Tried within a second, and failing again: one more attempt shows after a refresh.
        # (Read in the page itself: a refresh redraws the table under a held element.)
        def tried_again(d):
            shown = d.execute_script(
                "document.getElementById('removals-refresh').click();"
                "const cell = document.querySelector(arguments[0]);"
                "return cell ? cell.textContent : null;",
                f'{row_css} [data-field="attempts"]')
            return shown is not None and shown.isdigit() and int(shown) > attempts
        p.wait("the removal to be tried again", tried_again)
        p.d.execute_script("document.querySelector(arguments[0]).click();", f'{row_css} [data-action="drop"]')
        p.click("dialog [data-confirm]")
        p.gone(row_css, "the dropped removal to leave the list")
        p.css("#removal-list .empty", "the empty list")

    step("the audit log")
    p.go("#/audit")
    p.css("#audit-table", "the audit table")
    p.text_in("#audit-table", "token.create")
    p.text_in("#audit-table", "token.revoke")
    p.text_in("#audit-table", "auth.refused")  # the wrong token at sign-in
    if REMOVAL:
        p.text_in("#audit-table", "environment.removal_retry_now")
        p.text_in("#audit-table", "environment.removal_drop")
    p.shot("08-audit")
    p.sign_out()


def user_pages(p):
    step(f"{USER} signs in and sees only their own environments")
    p.sign_in(USER_TOKEN)
    p.text_in("#who-user", USER)
    p.wait("the live list", lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "open")
    p.css("#env-list .empty", f"{USER}'s empty list")
    assert not p.d.find_elements(By.CSS_SELECTOR, p.env_row(OTHER_ENV)), f"{USER} sees {OTHER_ENV}"
    assert OTHER_ENV not in p.d.find_element(By.ID, "main").text
    tokens_link = p.d.find_element(By.CSS_SELECTOR, '#nav a[data-page="tokens"]')
    audit_link = p.d.find_element(By.CSS_SELECTOR, '#nav a[data-page="audit"]')
    removals_link = p.d.find_element(By.CSS_SELECTOR, '#nav a[data-page="removals"]')
    assert not any(link.is_displayed() for link in (tokens_link, audit_link, removals_link)), "admin pages in a user's menu"
    p.shot("09-environments-user-empty")
    p.mark()

    step("create an environment from the form and see it reach running, without a reload")
    name = f"{USER}-web"
    p.click("#new-env")
    p.css("#create-name").send_keys(name)
    provider = p.css("#create-provider")  # a text field: users cannot list providers
    provider.clear()
    provider.send_keys("local-process")
    p.click("#add-config")
    keys = p.d.find_elements(By.CSS_SELECTOR, "#create-config .kv-key")
    values = p.d.find_elements(By.CSS_SELECTOR, "#create-config .kv-value")
    keys[-1].send_keys("purpose")
    values[-1].send_keys("browser test")
    p.click("#create-submit")
    p.css("#env-record", "the environment's page")
    p.wait("status running on the environment's page",
           lambda d: d.find_elements(By.CSS_SELECTOR, '#env-record .badge[data-status="running"]'))
    p.wait("the runtime connected",
           lambda d: d.find_elements(By.CSS_SELECTOR, '#env-record [data-connected="true"]'))
    p.assert_not_reloaded()
    record = p.d.find_element(By.ID, "env-json").get_attribute("textContent")
    assert '"purpose": "browser test"' in record, record
    assert f'"owner": "{USER}"' in record, record

    step("a line in the live log")
    p.wait("a line in the live log", lambda d: d.find_elements(By.CSS_SELECTOR, "#log-lines .log-line"))

    step("an echo in the thread console, and its reply")
    p.click("#console-connect")
    p.wait("the console to connect",
           lambda d: d.find_element(By.ID, "console-state").get_attribute("data-state") == "open")
    p.css("#console-input").send_keys("hello from the dashboard")
    p.click("#console-send")
    p.wait("the echo's reply",
           lambda d: any("hello from the dashboard" in e.text
                         for e in d.find_elements(By.CSS_SELECTOR, '#console-transcript .frame[data-type="echoResponse"]')))
    # JSON typed as it is goes as it is.
    box = p.css("#console-input")
    box.send_keys('{"type": "echo", "payload": {"n": 42}}')
    p.click("#console-send")
    p.wait("the JSON echo's reply",
           lambda d: any('"n":42' in e.text
                         for e in d.find_elements(By.CSS_SELECTOR, '#console-transcript .frame[data-type="echoResponse"]')))
    # The runtime's output reaches the log as it is written (a `process` line).
    p.wait("a line from the runtime process in the live log",
           lambda d: d.find_elements(By.CSS_SELECTOR, "#log-lines .log-line .log-src:not(.log-src-host)"))
    p.shot("10-environment-running")

    step("stop it from the list and see it stop as it happens")
    p.go("#/environments")
    row = p.env_row(name)
    p.css(f'{row} .badge[data-status="running"]', f"{name} running in the list")
    p.shot("11-environments-user-running")
    p.click(f'{row} [data-action="stop"]')
    p.css(f'{row} .badge[data-status="stopped"]', f"{name} stopped in the list")
    p.css(f'{row} [data-connected="false"]', "its runtime gone")
    p.css(f'{row} [data-action="start"]', "a start button in place of stop")

    step("delete it, with a confirmation")
    p.click(f'{row} [data-action="delete"]')
    p.css("dialog[open]", "the delete confirmation")
    p.shot("12-delete-confirm")
    p.click("dialog [data-confirm]")
    p.gone(row, f"{name} to leave the list")
    p.css("#env-list .empty", "the empty list again")
    p.assert_not_reloaded()
    p.shot("13-environments-user-deleted")

    step("the admin pages answer a user plainly")
    p.go("#/providers")
    p.text_in("#provider-list", "admin")
    p.sign_out()


def main():
    profile = tempfile.mkdtemp(prefix="tether-chromium-")
    driver = None
    page = None
    try:
        driver = browser(profile)
        page = Page(driver)
        admin_pages(page)
        user_pages(page)
        errors = page.console_errors()
        assert not errors, f"the browser's console shows errors: {errors}"
        print("dashboard: all steps passed", flush=True)
        return 0
    except Exception:
        traceback.print_exc()
        if page is not None:
            try:
                page.shot("failure")
                print(f"screenshot of the failure: {os.path.join(SHOTS, 'failure.png')}")
                print("browser console:", page.console_errors())
                print("page text:", driver.find_element(By.TAG_NAME, "body").text[:4000])
            except Exception:
                traceback.print_exc()
        return 1
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
