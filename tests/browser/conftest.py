"""Playwright driving Debian's Chromium (headless) against a live server on the test database."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import DATASET, ROOT, STAFF_PASSWORD, STAFF_USERNAME

# Playwright's sync API keeps an event loop in this thread; the test's own database calls are
# still synchronous, so Django's async-safety check would misfire.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "screenshots"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"  # from package-lock.json (bin/setup runs npm ci)

# Every rule axe-core runs by default, on the page or the part of it given; each violation with the
# elements it was found on.
RUN_AXE = """async (include) => {
  const results = await axe.run(include ? { include: [include] } : document, { resultTypes: ["violations"] });
  return results.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((node) => node.target.join(" ")),
  }));
}"""


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"No Chromium at {CHROMIUM}: apt-get install chromium, or set CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture
def screenshot():
    def take(page, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(f"No axe-core at {AXE}: run WITH_BROWSER=1 bin/setup (it runs npm ci)")
    return AXE.read_text()


@pytest.fixture
def assert_accessible(axe_source):
    """Fails with axe-core's violations on the page as it stands, if it finds any.

    axe is evaluated through Playwright rather than added as a <script>: the page's CSP forbids
    inline scripts, and DevTools evaluation is not subject to it, so the page is checked under the
    policy shoppers get."""

    def check(page, include: str | None = None) -> None:
        if not page.evaluate("() => 'axe' in window"):
            page.evaluate(axe_source)
        violations = page.evaluate(RUN_AXE, include)
        # axe adds a <style> of its own, which the policy rightly blocks: not the page's violation
        page.evaluate("() => { if (window.__cspViolations) window.__cspViolations = []; }")
        lines = []
        for violation in violations:
            lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']}")
            lines.extend(f"    {target}" for target in violation["targets"][:10])
            if len(violation["targets"]) > 10:
                lines.append(f"    … and {len(violation['targets']) - 10} more")
        summary = f"axe-core found {len(violations)} kinds of violation on {page.url}:"
        assert not violations, "\n".join([summary, *lines])

    return check


RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.effectiveDirective} blocked ${event.blockedURI || "inline"}`);
}, true);
"""


@pytest.fixture
def csp_violations(page):
    """Call it for what the Content-Security-Policy blocked on the current page so far."""
    page.add_init_script(RECORD_CSP_VIOLATIONS)

    def blocked() -> list[str]:
        page.wait_for_load_state("networkidle")
        return page.evaluate("window.__cspViolations")

    return blocked


@pytest.fixture
def admin_url(live_server, django_user_model) -> str:
    """The admin of a live server, with a superuser that tests.helpers.log_in_to_admin signs in."""
    django_user_model.objects.create_superuser(STAFF_USERNAME, "staff@example.com", STAFF_PASSWORD)
    return live_server.url + "/admin/"


@pytest.fixture(scope="session")
def side_by_side_photo(tmp_path_factory) -> Path:
    """A shopper's photo with two catalogue products side by side: 10009 (a red T-shirt) on the
    left, 10011 (grey track pants) on the right, so that which half is searched decides what is found."""
    left, right = (Image.open(DATASET / "images" / f"{sku}.jpg").convert("RGB") for sku in ("10009", "10011"))
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    path = tmp_path_factory.mktemp("photos") / "two products.jpg"
    canvas.save(path, quality=92)
    return path
