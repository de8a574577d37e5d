"""`choreo console` in a real browser: Debian's chromium, driven through its chromedriver by
selenium. Run by tests/console.rs, which starts nats-server, the review team and the console,
and passes what this needs in the environment; it prints each step, and `@@ COMMAND` lines that
the Rust side carries out (taking NATS down and up) before answering on standard input.

Every page visited is saved as a PNG in $SCREENSHOTS, for a person to look at.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["CONSOLE_URL"].rstrip("/")
TOKEN = os.environ["CONSOLE_TOKEN"]
CHOREO = os.environ["CHOREO"]
NATS_URL = os.environ["NATS_URL"]
REPORTS = os.environ["REPORTS_DIR"]
SAMPLE_DIFF = os.environ["SAMPLE_DIFF"]
COMPLETED = os.environ["COMPLETED_RUN"]
TEAM = os.environ["TEAM_AGENTS"].split(",")
SHOTS = os.environ["SCREENSHOTS"]
# How long any one thing may take before the test fails (as choreo_testkit::PATIENCE).
PATIENCE = 60


STARTED = time.monotonic()


def step(text):
    print(f"-- {text} (+{time.monotonic() - STARTED:.1f}s)", flush=True)


def ask(command):
    """Has the Rust side do `command`, and waits until it is done."""
    print(f"@@ {command}", flush=True)
    answer = sys.stdin.readline().strip()
    if answer != "ok":
        raise AssertionError(f"{command}: {answer or 'no answer'}")


def browser():
    options = Options()
    options.binary_location = os.environ.get("CHROMIUM") or shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver_path = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))


def wait(driver, what, condition):
    """Waits until `condition(driver)` is true, failing with `what` and the page's text."""

    def safe(d):
        try:
            return condition(d)
        except (StaleElementReferenceException, WebDriverException):
            return False

    try:
        return WebDriverWait(driver, PATIENCE, poll_frequency=0.2).until(safe)
    except Exception as error:
        text = driver.find_element(By.TAG_NAME, "body").text[:3000]
        raise AssertionError(f"timed out waiting until {what}\n--- the page ---\n{text}") from error


def shot(driver, name):
    """The whole page as $SCREENSHOTS/NAME.png."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(800, min(int(height) + 40, 5000)))
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))
    driver.set_window_size(1400, 1000)


def run_row(driver, run):
    rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-run="{run}"]')
    return rows[0] if rows else None


def status_of(driver, run):
    row = run_row(driver, run)
    return row.get_attribute("data-status") if row else None


def review(run_id):
    """Submits the sample change as run `run_id`, as a person would with `choreo review`."""
    subprocess.run(
        [CHOREO, "review", "--diff", SAMPLE_DIFF, "--id", run_id, "--repository", "acme/shop",
         "--title", f"Refunds ({run_id})", "--url", "https://github.com/acme/shop/pull/42"],
        env={**os.environ, "NATS_URL": NATS_URL},
        check=True,
        capture_output=True,
    )


def handlers(run):
    """The agents that handled an event of `run`, from `choreo trace --format json`."""
    trace = json.loads(
        subprocess.run(
            [CHOREO, "trace", run, "--format", "json"],
            env={**os.environ, "NATS_URL": NATS_URL},
            check=True,
            capture_output=True,
        ).stdout
    )
    agents = set()
    for node in trace["nodes"]:
        agents.update(node["handled_by"])
        agents.update(handling["agent"] for handling in node["handlings"])
    return agents


def main():
    os.makedirs(SHOTS, exist_ok=True)
    driver = browser()
    try:
        step("the console asks for its token once, and keeps it")
        driver.get(URL + "/")
        wait(driver, "the log-in form", lambda d: d.find_elements(By.NAME, "token"))
        shot(driver, "01-log-in")
        driver.find_element(By.NAME, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait(driver, "the runs page", lambda d: d.title.startswith("Runs"))

        step("the runs page lists the completed review")
        wait(driver, f"run {COMPLETED} listed complete", lambda d: status_of(d, COMPLETED) == "complete")
        shot(driver, "02-runs")

        step("a new review appears without a reload and turns complete")
        driver.execute_script("window.notReloaded = true")
        live = f"live-{uuid.uuid4().hex[:12]}"
        review(live)
        wait(driver, f"run {live} appears", lambda d: run_row(d, live) is not None)
        wait(driver, f"run {live} turns complete", lambda d: status_of(d, live) == "complete")
        assert driver.execute_script("return window.notReloaded === true"), "the page was reloaded"
        shot(driver, "03-runs-live")

        step("the runs page filters: failed only shows none of these")
        driver.get(URL + "/?status=failed")
        wait(driver, "the filtered page", lambda d: d.find_elements(By.ID, "live"))
        assert run_row(driver, COMPLETED) is None, "a complete run under 'failed only'"
        driver.get(URL + "/?q=PAYMENTS_API_KEY")
        wait(driver, "the search finds the runs", lambda d: run_row(d, COMPLETED) is not None)

        step("a run's page shows the tree and a timeline bar for every agent that handled it")
        driver.get(URL + "/")
        wait(driver, "the run's link", lambda d: run_row(d, COMPLETED) is not None)
        run_row(driver, COMPLETED).find_element(By.CSS_SELECTOR, "a").click()
        wait(driver, "the run's page", lambda d: d.find_elements(By.CSS_SELECTOR, ".timeline svg"))
        expected = handlers(COMPLETED)
        assert expected >= {"triage", "security", "performance", "style", "tests", "aggregator",
                            "editor", "notifier"}, expected
        bars = {
            g.get_attribute("data-agent")
            for g in driver.find_elements(By.CSS_SELECTOR, ".timeline svg g.handling")
        }
        assert bars >= expected, f"timeline bars for {sorted(bars)}, handled by {sorted(expected)}"
        tree = driver.find_element(By.CSS_SELECTOR, ".timeline svg").text
        for event_type in ("review.requested", "review.planned", "review.finding",
                           "review.completed", "review.delivered"):
            assert event_type in tree, f"{event_type} not in the tree"
        assert driver.find_elements(By.CSS_SELECTOR, "#output"), "no final output"
        badge = driver.find_element(By.CSS_SELECTOR, "h1 .badge").get_attribute("data-status")
        assert badge == "complete", badge
        for link in ("Trace as JSON", "Trace as Mermaid", "Download events (CloudEvents JSON lines)"):
            assert driver.find_elements(By.LINK_TEXT, link), f"no link {link}"
        shot(driver, "04-run")

        step("a run with a dead letter shows it with its reason")
        blocked = f"blocked-{uuid.uuid4().hex[:12]}"
        # The notifier writes REPORTS/RUN.md; a folder in its place makes that fail.
        os.makedirs(os.path.join(REPORTS, f"{blocked}.md"))
        driver.get(URL + "/")
        review(blocked)
        wait(driver, f"run {blocked} turns failed", lambda d: status_of(d, blocked) == "failed")
        shot(driver, "05-runs-failed")
        driver.get(f"{URL}/runs/{blocked}")
        wait(driver, "the dead letters", lambda d: d.find_elements(By.CSS_SELECTOR, "table.dead-letters tr[data-dead-letter]"))
        letter = driver.find_element(By.CSS_SELECTOR, "table.dead-letters tr[data-dead-letter]")
        assert "notifier" in letter.text, letter.text
        assert letter.find_element(By.CSS_SELECTOR, ".reason").text == "handler_failed", letter.text
        assert "Is a directory" in letter.text, letter.text
        shot(driver, "06-run-dead-letter")

        step("the dead letters page lists it")
        driver.get(URL + "/dead-letters")
        wait(driver, "the dead letter", lambda d: blocked in d.find_element(By.CSS_SELECTOR, "table.letters").text)
        shot(driver, "07-dead-letters")

        step("after the cause is fixed, Redrive completes the run and the page shows it")
        os.rmdir(os.path.join(REPORTS, f"{blocked}.md"))
        driver.get(f"{URL}/runs/{blocked}")
        wait(driver, "the Redrive button", lambda d: d.find_elements(By.CSS_SELECTOR, "button.redrive"))
        driver.find_element(By.CSS_SELECTOR, "button.redrive").click()
        wait(driver, "the redrive said", lambda d: "Redrove dead letter" in d.find_element(By.CSS_SELECTOR, ".banner.done").text)
        wait(driver, "the run complete", lambda d: d.find_element(By.CSS_SELECTOR, "h1 .badge").get_attribute("data-status") == "complete")
        assert "redriven" in driver.find_element(By.CSS_SELECTOR, "table.dead-letters").text
        assert os.path.isfile(os.path.join(REPORTS, f"{blocked}.md")), "no report written"
        shot(driver, "08-run-redriven")

        step("a dead letter purged after its confirmation")
        doomed = f"purged-{uuid.uuid4().hex[:12]}"
        os.makedirs(os.path.join(REPORTS, f"{doomed}.md"))
        review(doomed)
        driver.get(f"{URL}/dead-letters?run={doomed}")
        wait(driver, "its dead letter", lambda d: d.find_elements(By.CSS_SELECTOR, "table.letters tr[data-dead-letter]")
             or (d.refresh() and False))
        row = driver.find_element(By.CSS_SELECTOR, "table.letters tr[data-dead-letter]")
        number = row.get_attribute("data-dead-letter")
        row.find_element(By.LINK_TEXT, "Purge…").click()
        wait(driver, "the confirmation", lambda d: d.find_element(By.TAG_NAME, "h1").text == f"Purge dead letter {number}?")
        shot(driver, "08b-purge-confirmation")
        driver.find_element(By.CSS_SELECTOR, "button.danger").click()
        wait(driver, "the purge said", lambda d: "Purged 1 dead letter" in d.find_element(By.CSS_SELECTOR, ".banner.done").text)
        assert not driver.find_elements(By.CSS_SELECTOR, f'tr[data-dead-letter="{number}"]'), "still listed"
        os.rmdir(os.path.join(REPORTS, f"{doomed}.md"))

        step("the agents page lists every agent of the team")
        driver.get(URL + "/agents")
        wait(driver, "every agent", lambda d: all(
            d.find_elements(By.CSS_SELECTOR, f'tr[data-agent="{agent}"]') for agent in TEAM))
        for agent in TEAM:
            row = driver.find_element(By.CSS_SELECTOR, f'tr[data-agent="{agent}"]')
            assert "healthy" in row.text, row.text
        shot(driver, "09-agents")

        step("two runs compared")
        driver.get(f"{URL}/compare?a={COMPLETED}&b={live}")
        wait(driver, "the verdict", lambda d: d.find_elements(By.CSS_SELECTOR, ".verdict"))
        shot(driver, "10-compare")

        step("an unknown run shows the not-found page")
        driver.get(URL + "/runs/no-such-run")
        wait(driver, "the not-found page", lambda d: d.find_elements(By.CSS_SELECTOR, ".notfound"))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Run not found"
        assert "no-such-run" in driver.find_element(By.CSS_SELECTOR, ".notfound").text
        shot(driver, "11-not-found")
        driver.get(URL + "/dead-letters/999999")
        wait(driver, "the dead letter's not-found page", lambda d: d.find_elements(By.CSS_SELECTOR, ".notfound"))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Dead letter not found"

        step("NATS down: the page says so, and recovers by itself when NATS is back")
        driver.get(URL + "/")
        wait(driver, "the runs", lambda d: run_row(d, COMPLETED) is not None)
        driver.execute_script("window.notReloaded = true")
        ask("nats-down")
        wait(driver, "the banner", lambda d: d.find_elements(By.CSS_SELECTOR, "#status .banner.down"))
        shot(driver, "12-nats-down")
        ask("nats-up")
        wait(driver, "the banner gone", lambda d: not d.find_elements(By.CSS_SELECTOR, "#status .banner"))
        after = f"after-{uuid.uuid4().hex[:12]}"
        review(after)
        wait(driver, f"run {after} complete, live", lambda d: status_of(d, after) == "complete")
        assert driver.execute_script("return window.notReloaded === true"), "the page was reloaded"
        shot(driver, "13-nats-back")
        step("all passed")
    except Exception:
        try:
            shot(driver, "failed")
        except Exception:
            pass
        raise
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
