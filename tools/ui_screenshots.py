"""Screenshots of the web UI's main pages into docs/img/ (docs/ui.md shows them).

Starts an amqpd with the management listener on a free port, gives it some traffic (queues in
two vhosts, a publisher and a consumer running while the pictures are taken, a user and a
policy), then opens each page in a headless Chromium (tests/browser.py) and saves it:

    PYTHONPATH=$PWD python tools/ui_screenshots.py [--out docs/img] [--warmup 20]

``--warmup`` is how many seconds of traffic the overview's charts collect first."""
import argparse
import base64
import json
import os
import pathlib
import sys
import tempfile
import threading
import time
import urllib.request

import pika

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amqpd.testing import BrokerThread  # noqa: E402
from tests.browser import make_driver, missing_reason  # noqa: E402

PAGES = [("overview", "#/"), ("queues", "#/queues"), ("queue", "#/queues/%2F/orders"),
         ("exchanges", "#/exchanges"), ("exchange", "#/exchanges/%2F/events"),
         ("connections", "#/connections"), ("channels", "#/channels"), ("admin", "#/admin")]


def api(base: str, method: str, path: str, body=None):
    req = urllib.request.Request(base + "/api" + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def setup(broker_url: str, base: str) -> None:
    """Queues, exchanges, bindings, a vhost, a user and a policy to look at."""
    for path, body in [("/vhosts/staging", {"description": "pre-production"}),
                       ("/users/alice", {"password": "s3cret", "tags": "monitoring"}),
                       ("/permissions/staging/alice", {"configure": "", "write": "^orders", "read": ".*"}),
                       ("/policies/%2F/cap-logs", {"pattern": "^logs\\.", "apply-to": "queues",
                                                   "definition": {"max-length": 10000}, "priority": 1})]:
        try:
            api(base, "PUT", path, body)
        except Exception as exc:                  # an endpoint the API does not have yet
            print(f"setup: PUT {path}: {exc}", file=sys.stderr)
    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    ch.exchange_declare("events", "topic", durable=True)
    ch.exchange_declare("audit", "fanout", durable=True)
    for name, args in [("orders", {}), ("invoices", {"x-message-ttl": 3600000}),
                       ("logs.app", {}), ("logs.audit", {"x-max-length": 5000}),
                       ("emails", {"x-dead-letter-exchange": "audit"})]:
        ch.queue_declare(name, durable=True, arguments=args)
    ch.queue_bind("orders", "events", "order.*")
    ch.queue_bind("invoices", "events", "order.paid")
    ch.queue_bind("logs.audit", "audit")
    for i in range(120):
        ch.basic_publish("events", "order.created", b'{"order": %d}' % i,
                         pika.BasicProperties(content_type="application/json", delivery_mode=2))
    for i in range(40):
        ch.basic_publish("", "emails", b"hello %d" % i)
    conn.close()
    staging = pika.BlockingConnection(pika.URLParameters(broker_url.rsplit("/", 1)[0] + "/staging"))
    sch = staging.channel()
    sch.queue_declare("orders.staging", durable=True)
    for i in range(7):
        sch.basic_publish("", "orders.staging", b"x")
    staging.close()


def traffic(broker_url: str, stop: threading.Event) -> None:
    """A publisher (confirms) and a consumer on logs.app, so the charts and rates move."""
    params = pika.URLParameters(broker_url)
    params.client_properties = {"connection_name": "log-shipper"}
    pub = pika.BlockingConnection(params)
    pch = pub.channel()
    pch.confirm_delivery()
    params = pika.URLParameters(broker_url)
    params.client_properties = {"connection_name": "log-indexer"}
    sub = pika.BlockingConnection(params)
    sch = sub.channel()
    sch.basic_qos(prefetch_count=50)
    sch.basic_consume("logs.app", lambda c, m, p, b: c.basic_ack(m.delivery_tag))
    n = 0
    while not stop.is_set():
        for _ in range(20):
            pch.basic_publish("", "logs.app", b"line %d" % n)
            n += 1
        pch.basic_publish("events", "order.paid", b'{"paid": true}')
        sub.process_data_events(time_limit=0.1)
        pub.process_data_events(time_limit=0)
    sub.close()
    pub.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "img"))
    p.add_argument("--warmup", type=float, default=20)
    a = p.parse_args()
    reason = missing_reason()
    if reason:
        sys.exit(reason)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # resource checks on (an embedded broker has them off), so the overview shows memory and disk
    data_dir = tempfile.TemporaryDirectory(prefix="amqpd-ui-")     # on disk: a disk to measure
    with data_dir, BrokerThread(http_port=0, vhosts=["/", "staging"], data_dir=data_dir.name,
                                config={"resources": {"check_interval": 1}}) as broker:
        base = broker.management_url
        setup(broker.url, base)
        stop = threading.Event()
        worker = threading.Thread(target=traffic, args=(broker.url, stop), daemon=True)
        worker.start()
        driver = make_driver(1360, 860)
        try:
            driver.get(base + "/")
            driver.execute_script("sessionStorage.setItem('amqpd.refresh', '1000')")
            driver.get(base + "/")
            driver.find_element(By.ID, "login-username").send_keys("guest")
            driver.find_element(By.ID, "login-password").send_keys("guest")
            driver.find_element(By.ID, "login-submit").click()
            WebDriverWait(driver, 10).until(
                lambda d: d.execute_script("return document.getElementById('main').dataset.loaded"))
            time.sleep(a.warmup)          # the overview charts plot what the page saw over time
            for name, fragment in PAGES:
                driver.get(base + "/" + fragment)
                WebDriverWait(driver, 10).until(lambda d: d.execute_script(
                    "return document.getElementById('main').dataset.loaded"))
                if name == "queue":       # show a message got (and requeued)
                    driver.find_element(By.CSS_SELECTOR, "#get-messages button[type=submit]").click()
                    WebDriverWait(driver, 10).until(
                        lambda d: d.find_elements(By.CSS_SELECTOR, "#got-messages .message"))
                if name != "overview":
                    time.sleep(1.2)       # one refresh later: rates computed from two samples
                # the whole page, up to a limit
                height, chrome = driver.execute_script(
                    "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
                driver.set_window_size(1360, min(height, 1800) + chrome)
                driver.execute_script("window.scrollTo(0, 0)")
                path = out / f"ui-{name}.png"
                driver.save_screenshot(str(path))
                driver.set_window_size(1360, 860)
                print(path)
        finally:
            driver.quit()
            stop.set()
            worker.join(10)


if __name__ == "__main__":
    main()
