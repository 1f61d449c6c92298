"""A real Celery app for the interop suite (interop/clients/celery_client.py drives it).

Workers run it as ``python -m celery -A interop.celery_app worker ...``. Everything that differs
between runs comes from the environment: AMQPD_CELERY_BROKER (the broker URL),
AMQPD_CELERY_QUEUE (the task queue, unique per run), AMQPD_CELERY_OUT (a directory where tasks
append one line per execution, so a SIGKILLed worker loses nothing that was recorded).
"""
import os
import time

from celery import Celery

app = Celery("interop_celery",
             broker=os.environ.get("AMQPD_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
QUEUE = os.environ.get("AMQPD_CELERY_QUEUE", "interop-celery")
OUT = os.environ.get("AMQPD_CELERY_OUT", ".")

app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,                 # a task's message is acked after it ran
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_heartbeat=10,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    event_queue_expires=60,
)


def _append(name: str, line: str) -> None:
    fd = os.open(os.path.join(OUT, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Flaky(Exception):
    pass


@app.task(bind=True)
def record(self, n: int, sleep: float = 0.0):
    """One line per execution: task number, redelivered flag, worker pid."""
    if sleep:
        time.sleep(sleep)
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    _append("record.log", f"{n} {int(redelivered)} {os.getpid()} {time.time():.3f}")
    return n


@app.task(bind=True)
def at_time(self, tag: str):
    _append("eta.log", f"{tag} {time.time():.3f}")
    return tag


@app.task(bind=True, autoretry_for=(Flaky,), retry_backoff=1, retry_backoff_max=8,
          retry_jitter=False, max_retries=3)
def flaky(self, key: str, failures: int):
    """Fails `failures` times, then succeeds; retried with exponential backoff 1 s, 2 s, 4 s."""
    _append("flaky.log", f"{key} {self.request.retries} {time.time():.3f}")
    if self.request.retries < failures:
        raise Flaky(f"attempt {self.request.retries}")
    return self.request.retries
