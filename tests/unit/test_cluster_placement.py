"""The placement view (cluster/placement.py) as the membership watch feeds it: records by
queue, their revisions, and listeners told of every change, also across a reload."""
from amqpd.cluster.placement import Placements, record


class View:
    prefix = "/amqpd/c/"


def test_records_follow_the_watch_and_listeners_hear_each_change():
    p, heard = Placements(View()), []
    p.listen(lambda vhost, name, old, new: heard.append((vhost, name, old, new)))
    rec = record("quorum", "n1", ["n1", "n2", "n3"])
    p.apply("%2F/orders", rec, 7)
    assert p.get("/", "orders") == rec and p.revisions[("/", "orders")] == 7
    assert p.leader("/", "orders") == "n1"
    moved = dict(rec, leader="n2", epoch=2, isr=["n2", "n3"])
    p.apply("%2F/orders", moved, 9)
    p.apply("%2F/orders", moved, 9)          # the same record again: nobody is told
    p.apply("%2F/orders", None, 10)
    assert heard == [("/", "orders", None, rec), ("/", "orders", rec, moved),
                     ("/", "orders", moved, None)]
    assert p.get("/", "orders") is None and p.key("/", "a/b") == "/amqpd/c/placement/%2F/a%2Fb"


def test_a_reload_reports_what_went_missing_while_the_watch_was_cut():
    p, heard = Placements(View()), []
    p.apply("v/a", record("classic", "n1", ["n1"]), 3)
    p.apply("v/b", record("classic", "n2", ["n2"]), 4)
    p.listen(lambda vhost, name, old, new: heard.append((name, new and new["leader"])))
    p.reload([("v/b", record("classic", "n3", ["n3"]), 8)])
    assert sorted(heard) == [("a", None), ("b", "n3")]
