"""Tickets: the confirm of a publish decided elsewhere (a queue led by another node, a
replicated queue waiting for its replicas), and how verdicts merge over the queues a publish
reached."""
from amqpd.broker.publish import REJECTED, STORED, Ticket, with_tickets


class Waiter:
    def __init__(self):
        self.calls = 0

    def flush_confirms(self):
        self.calls += 1


def test_a_ticket_tells_its_waiters_once():
    t, w = Ticket(), Waiter()
    t.wait(w)
    assert t.ok is None and w.calls == 0
    t.resolve()
    t.resolve(False)                      # a second decision is ignored
    assert t.ok is True and w.calls == 1


def test_waiting_on_a_done_ticket_answers_at_once():
    t, w = Ticket(), Waiter()
    t.resolve(False)
    t.wait(w)
    assert w.calls == 1 and t.ok is False


def test_all_is_done_when_every_part_is_and_fails_on_the_first_failure():
    a, b, c = Ticket(), Ticket(), Ticket()
    both = Ticket.all([a, b])
    a.resolve()
    assert both.ok is None
    b.resolve()
    assert both.ok is True
    d = Ticket.all([c, Ticket()])
    c.resolve(False)
    assert d.ok is False


def test_a_rejection_wins_over_tickets():
    assert with_tickets(REJECTED, [Ticket()]) is REJECTED


def test_tickets_alone_or_with_in_memory_queues_need_no_fsync():
    t = Ticket()
    assert with_tickets(None, [t]) is t and not t.stored


def test_a_ticket_merged_with_a_local_durable_queue_waits_for_the_fsync_too():
    t = Ticket()
    assert with_tickets(STORED, [t]) is t and t.stored
    u, v = Ticket(), Ticket()
    v.stored = True
    both = with_tickets(None, [u, v])
    assert both.stored
    u.resolve()
    v.resolve()
    assert both.ok is True
