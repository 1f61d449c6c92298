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
