"""The web UI in a real headless Chromium against a real amqpd: pika changes the broker, the
page shows it; the page changes the broker, pika sees it. No sleeps: every wait is a
WebDriverWait on what the page shows (the page refreshes every second here, and at once after
each action). Skips locally without Chromium; fails in CI (tests/browser.py)."""
import base64
import json
import urllib.error
import urllib.request

import pika
import pytest

from .browser import browser  # noqa: F401  (the fixture)

TIMEOUT = 10


@pytest.fixture
def ui(make_broker, browser):  # noqa: F811
    """A broker with the HTTP listener on, and the browser logged in to its UI."""
    page = login(browser, make_broker(http_port=0))
    yield page
    browser.execute_script("sessionStorage.clear()")


def login(browser, b, user="guest", password="guest"):  # noqa: F811
    from selenium.webdriver.common.by import By

    base = b.management_url
    browser.get(base + "/")
    # a fresh origin per broker (its own port): sessionStorage starts empty
    browser.execute_script("sessionStorage.setItem('amqpd.refresh', '1000')")
    browser.get(base + "/")
    browser.find_element(By.ID, "login-username").send_keys(user)
    browser.find_element(By.ID, "login-password").send_keys(password)
    browser.find_element(By.ID, "login-submit").click()
    page = Page(browser, base)
    page.wait_loaded()
    page.broker = b
    return page


class Page:
    def __init__(self, driver, base):
        self.d = driver
        self.base = base

    def wait(self, predicate, what):
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.d, TIMEOUT, ignored_exceptions=(StaleElementReferenceException,)) \
                .until(lambda d: predicate())
        except TimeoutException:
            raise AssertionError(f"the page never showed {what}; flash: {self.flash()!r}") from None

    def flash(self):
        return self.d.execute_script("const f = document.getElementById('flash'); "
                                     "return f.hidden ? '' : f.textContent")

    def wait_loaded(self):
        self.wait(lambda: self.d.execute_script("return document.getElementById('main').dataset.loaded"),
                  "a loaded page")

    def go(self, fragment):
        self.d.get(self.base + "/" + fragment)
        self.wait_loaded()

    # the page redraws its tables every second: an element found may be replaced before it is
    # read or clicked, so both retry on a stale element (within the same timeout)
    def text(self, css):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        for _ in range(10):
            try:
                found = self.d.find_elements(By.CSS_SELECTOR, css)
                return found[0].text if found else None
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept being redrawn")

    def click(self, css):
        from selenium.webdriver.common.by import By

        def clicked():
            self.d.find_element(By.CSS_SELECTOR, css).click()
            return True
        self.wait(clicked, f"a clickable {css}")

    def fill(self, form_css, submit=True, **values):
        from selenium.webdriver.common.by import By
        form = self.d.find_element(By.CSS_SELECTOR, form_css)
        for name, value in values.items():
            el = form.find_element(By.NAME, name)
            if el.tag_name == "select":
                from selenium.webdriver.support.ui import Select
                Select(el).select_by_value(value)
            else:
                el.clear()
                el.send_keys(value)
        if submit:
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    def accept_confirm(self):
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(self.d, TIMEOUT).until(EC.alert_is_present())
        self.d.switch_to.alert.accept()


@pytest.fixture
def channel(ui):
    """A pika channel on the UI's broker (closed at teardown: the broker fixture checks)."""
    conn = pika.BlockingConnection(pika.URLParameters(ui.broker.url))
    yield conn.channel()
    if conn.is_open:
        conn.close()


def whoami(base, user, password):
    req = urllib.request.Request(base + "/api/whoami", headers={
        "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def test_the_files_are_served_from_the_package_without_login_and_load_nothing_external(make_broker):
    import re

    b = make_broker(http_port=0)
    for path, kind in [("/", "text/html"), ("/index.html", "text/html"),
                       ("/app.js", "text/javascript"), ("/app.css", "text/css")]:
        with urllib.request.urlopen(b.management_url + path, timeout=10) as r:
            assert r.status == 200 and r.headers.get_content_type() == kind, path
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            text = r.read().decode()
        # no CDN, no web font: the only absolute URL is the SVG namespace
        assert set(re.findall(r"https?://[^\s'\")]+", text)) <= {"http://www.w3.org/2000/svg"}, path
    # the API beside it still wants credentials
    assert whoami(b.management_url, "guest", "wrong")[0] == 401


def test_a_wrong_password_is_refused_and_the_ui_is_served_from_the_package(make_broker, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    b = make_broker(http_port=0)
    browser.get(b.management_url + "/")
    browser.find_element(By.ID, "login-username").send_keys("guest")
    browser.find_element(By.ID, "login-password").send_keys("wrong")
    browser.find_element(By.ID, "login-submit").click()
    page = Page(browser, b.management_url)
    page.wait(lambda: "Login failed" in (page.text("#login-error") or ""), "a failed login")
    assert browser.execute_script("return sessionStorage.getItem('amqpd.auth')") is None
    # every resource the page loaded came from the broker itself (no CDN)
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(b.management_url) for u in urls), urls
    # a user name with characters outside Latin-1 is sent as UTF-8, not an exception
    browser.find_element(By.ID, "login-username").clear()
    browser.find_element(By.ID, "login-username").send_keys("gäst✓")
    browser.find_element(By.ID, "login-submit").click()
    page.wait(lambda: "Login failed" in (page.text("#login-error") or ""), "a failed login")


def test_queue_count_follows_publishes_then_purge_from_the_queue_page(ui, channel):
    ch = channel
    ch.queue_declare("ui-q", durable=True)
    ui.go("#/queues")
    row = 'tr[data-vhost="/"][data-name="ui-q"]'
    ui.wait(lambda: ui.text(row + " td.c-messages_ready") == "0", "ui-q with 0 ready")
    for i in range(3):
        ch.basic_publish("", "ui-q", b"m%d" % i)
    ui.wait(lambda: ui.text(row + " td.c-messages_ready") == "3", "ui-q with 3 ready")

    ui.click(row + " td.c-name a")
    ui.wait(lambda: ui.text("#q-ready") == "3", "the queue page with 3 ready")
    ui.click("#purge")
    ui.accept_confirm()
    ui.wait(lambda: ui.text("#q-ready") == "0", "the purged queue")
    assert ch.queue_declare("ui-q", passive=True).method.message_count == 0


def test_queues_are_filtered_sorted_and_paged_by_the_api(ui, channel):
    for i in range(22):
        channel.queue_declare(f"page-{i:02d}")
    channel.queue_declare("deep")
    for _ in range(2):
        channel.basic_publish("", "deep", b"x")
    ui.go("#/queues")
    ui.fill("div.toolbar", submit=False, page_size="20")
    ui.wait(lambda: ui.text("#pager-info") == "page 1 of 2 · 23 shown", "two pages of 20")
    ui.click("#page-next")
    ui.wait(lambda: ui.text("#pager-info") == "page 2 of 2 · 23 shown", "page 2")
    assert len(ui.d.find_elements("css selector", "tbody tr")) == 3
    ui.click("#page-prev")
    total = "th.sortable:nth-of-type(8)"           # Total
    assert ui.text(total).startswith("Total")
    ui.click(total)
    ui.click(total)                                  # again: largest first
    ui.wait(lambda: ui.text("tbody tr:first-child td.c-name") == "deep", "deep first")
    ui.d.find_element("id", "filter").send_keys("page-1")
    ui.wait(lambda: ui.text("#pager-info") == "page 1 of 1 · 10 shown of 23", "the filtered list")


def test_the_overview_shows_a_disk_alarm(make_broker, browser):  # noqa: F811
    # a free-disk limit no disk meets: the disk alarm goes off at the first check
    b = make_broker(http_port=0, resources={"disk_free_limit": 10 ** 18, "check_interval": 0.05})
    page = login(browser, b)
    page.wait(lambda: (page.text("#alarms") or "").startswith("ALARMS\ndisk"), "the disk alarm")
    page.wait(lambda: "alarm" in page.d.find_element("id", "alarms").get_attribute("class"), "a red card")
    assert "alarm" in page.text("#nodes td.c-disk")


def test_publish_from_the_exchange_page(ui, channel):
    ch = channel
    ch.exchange_declare("ui-x", "direct")
    ch.queue_declare("ui-target")
    ch.queue_bind("ui-target", "ui-x", "rk")
    ui.go("#/exchanges/%2F/ui-x")
    ui.wait(lambda: ui.text("#bindings td.c-routing_key") == "rk", "the binding")
    ui.fill("form#publish", routing_key="rk", payload="hello from the UI",
            headers="source = ui")
    ui.wait(lambda: ui.flash() == "Message published.", "the publish confirmed")
    method, props, body = ch.basic_get("ui-target", auto_ack=True)
    assert body == b"hello from the UI"
    assert props.delivery_mode == 2 and props.headers == {"source": "ui"}


def test_close_a_connection(ui):
    params = pika.URLParameters(ui.broker.url)
    params.client_properties = {"connection_name": "to-be-closed"}
    victim = pika.BlockingConnection(params)
    try:
        ui.go("#/connections")
        row = 'tr[data-connection-name="to-be-closed"]'
        ui.wait(lambda: ui.text(row + " td.c-user") == "guest", "the connection")
        ui.click(row + " td.c-close button")
        ui.accept_confirm()
        ui.wait(lambda: ui.text(row) is None, "the connection gone")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            victim.process_data_events(time_limit=TIMEOUT)
        assert closed.value.reply_code == 320
    finally:
        if victim.is_open:
            victim.close()


def test_add_a_user_and_give_it_a_permission(ui):
    ui.go("#/admin")
    # the forms sit in closed <details>: open them as a user would
    ui.d.execute_script("document.getElementById('add-user').closest('details').open = true")
    ui.fill("form#add-user", name="bob", password="b0b-pass", tags="management")
    ui.wait(lambda: ui.text('#users tr[data-name="bob"] td.c-tags') == "management", "user bob")
    ui.d.execute_script("document.getElementById('set-permission').closest('details').open = true")
    ui.fill("form#set-permission", user="bob", vhost="/", configure="^bob-", write=".*", read=".*")
    ui.wait(lambda: ui.text('#permissions tr[data-user="bob"][data-vhost="/"] td.c-configure') == "^bob-",
            "bob's permission")
    assert whoami(ui.base, "bob", "b0b-pass") == (200, {"name": "bob", "tags": ["management"]})


def test_a_management_user_sees_why_admin_is_refused_and_stays_logged_in(ui, browser):  # noqa: F811
    # RabbitMQ answers 401 "not_authorised" to a known user without the tag: that is not a
    # wrong password, so the page must not log the user out
    ui.go("#/admin")
    ui.d.execute_script("document.getElementById('add-user').closest('details').open = true")
    ui.fill("form#add-user", name="mgr", password="m", tags="management")
    ui.wait(lambda: ui.text('#users tr[data-name="mgr"]') is not None, "user mgr")
    browser.execute_script("sessionStorage.clear()")
    page = login(browser, ui.broker, "mgr", "m")
    assert page.text("#whoami") == "mgr (management)"
    page.go("#/admin")
    page.wait(lambda: page.text("#users p.error") == "Not administrator user", "the refusal")
    assert page.d.find_element("id", "login").is_displayed() is False
