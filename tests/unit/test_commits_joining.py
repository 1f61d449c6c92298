"""The commit rule while a member joins the in-sync set (amqpd/cluster/replica.py's
Commits): from the moment the leader decides a member has everything confirmed, confirms
wait for it too, though it does not count towards the majority until the swap landed."""
from amqpd.cluster.replica import Commits


class T:
    def __init__(self):
        self.ok = None


def test_a_joining_member_is_waited_for_but_not_counted():
    c = Commits(["a", "b", "c", "d"])              # d was just added: majority is 3
    t1 = T()
    c.add(t1)
    s1 = c.op(0.0)
    c.acked.update(b=s1, c=s1)
    assert c.committed(["a", "b", "c"], "a") == s1
    # d is joining and lags behind s1: s1 is not confirmed until d has it too
    assert c.ready(["a", "b", "c"], "a", joining={"d"}) == []
    c.acked["d"] = s1
    assert c.ready(["a", "b", "c"], "a", joining={"d"}) == [t1]


def test_joining_members_do_not_make_a_majority():
    c = Commits(["a", "b", "c"])
    t1 = T()
    c.add(t1)
    s1 = c.op(0.0)
    c.acked.update(b=s1, c=s1)
    # the leader alone in the set, two joining: not a majority of the members yet
    assert c.committed(["a"], "a", joining={"b", "c"}) == 0
    assert c.ready(["a", "b"], "a", joining={"c"}) == [t1]


def test_what_was_confirmed_is_remembered_when_the_set_loses_its_majority():
    """committed() is 0 below a majority; a member may join only with everything that was
    ever confirmed, so the high-water mark is kept."""
    c = Commits(["a", "b", "c"])
    t1 = T()
    c.add(t1)
    s1 = c.op(0.0)
    c.acked.update(b=s1)
    assert c.ready(["a", "b"], "a") == [t1]
    assert c.confirmed == s1
    assert c.committed(["a"], "a") == 0          # b removed: below a majority
    assert c.confirmed == s1                     # c (acked nothing) may not join on 0
