"""Topic-exchange routing trie with RabbitMQ semantics.

Patterns and routing keys are split on '.'.  In a pattern, '*' matches
exactly one word and '#' matches zero or more words; any other word
(including one that merely contains '*' or '#', such as "a#") is literal.

Empty words are significant: "a..b" is ["a", "", "b"] and "a." is
["a", ""].  The empty string is *zero* words, not one empty word: RabbitMQ's
split_topic_key/split_topic_key_binary special-case <<>> -> [] for both
binding keys and routing keys.  So pattern "" and pattern "#" match routing
key "", while "*" does not.

Matching walks the trie as an NFA over (node, word position) states.  Only
'#' can make the walk reach the same state twice (it may swallow any number
of words), so states are deduplicated at '#' nodes; every other node's state
is reached solely through its parent's state, which is therefore unique by
induction.  This bounds the work per match by nodes * (words + 1) instead of
the exponential blow-up a naive backtracker has on patterns like "#.#.#.a".
"""

from __future__ import annotations

from typing import Any, Hashable

__all__ = ["TopicTrie", "split_words"]


def split_words(key: str) -> list[str]:
    # "" is special-cased to no words to mirror RabbitMQ; str.split would
    # give [""], which would let "*" match the empty routing key.
    return key.split(".") if key else []


class _Node:
    __slots__ = ("children", "star", "hash", "dests", "is_hash")

    def __init__(self, is_hash: bool = False) -> None:
        # Created lazily: with tens of thousands of bindings most nodes are
        # leaves, and an empty dict per leaf is a noticeable memory cost.
        self.children: dict[str, _Node] | None = None
        # Wildcards live outside `children` so the hot path avoids two extra
        # dict lookups per state, and so a literal routing-key word "*" or
        # "#" can never be mistaken for a wildcard edge in `children`.
        self.star: _Node | None = None
        self.hash: _Node | None = None
        self.dests: dict[Hashable, int] | None = None  # dest -> refcount
        self.is_hash = is_hash

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.hash or self.dests)


class TopicTrie:
    """Bindings of (pattern, dest) pairs, matched against routing keys."""

    __slots__ = ("_root", "_count")

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def bind(self, pattern: str, dest: Any) -> None:
        node = self._root
        for word in split_words(pattern):
            if word == "*":
                nxt = node.star
                if nxt is None:
                    nxt = node.star = _Node()
            elif word == "#":
                nxt = node.hash
                if nxt is None:
                    nxt = node.hash = _Node(is_hash=True)
            else:
                children = node.children
                if children is None:
                    children = node.children = {}
                nxt = children.get(word)
                if nxt is None:
                    nxt = children[word] = _Node()
            node = nxt
        dests = node.dests
        if dests is None:
            dests = node.dests = {}
        refs = dests.get(dest, 0)
        if refs == 0:
            self._count += 1
        dests[dest] = refs + 1

    def unbind(self, pattern: str, dest: Any) -> bool:
        # Remember the path so empty nodes can be pruned bottom-up without
        # storing parent pointers on every node.
        path: list[tuple[_Node, str]] = []
        node = self._root
        for word in split_words(pattern):
            if word == "*":
                nxt = node.star
            elif word == "#":
                nxt = node.hash
            else:
                nxt = node.children.get(word) if node.children else None
            if nxt is None:
                return False
            path.append((node, word))
            node = nxt
        dests = node.dests
        if not dests or dest not in dests:
            return False
        refs = dests[dest] - 1
        if refs:
            dests[dest] = refs
            return True
        del dests[dest]
        self._count -= 1
        if not dests:
            node.dests = None
        while path and node.is_empty():
            parent, word = path.pop()
            if word == "*":
                parent.star = None
            elif word == "#":
                parent.hash = None
            else:
                children = parent.children
                del children[word]  # type: ignore[union-attr]
                if not children:
                    parent.children = None
            node = parent
        return True

    def match(self, routing_key: str) -> set:
        return self.match_with_stats(routing_key)[0]

    def match_with_stats(self, routing_key: str) -> tuple[set, int]:
        """Return (matching dests, number of trie states visited).

        The state count is exposed so tests can bound the algorithmic cost
        deterministically instead of relying on wall-clock timing.
        """
        words = split_words(routing_key)
        n = len(words)
        result: set = set()
        seen: set[tuple[_Node, int]] = set()
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        visited = 0
        pop = stack.pop
        push = stack.append
        while stack:
            node, i = pop()
            if node.is_hash:
                state = (node, i)
                if state in seen:
                    continue
                seen.add(state)
                if i < n:
                    # '#' swallows word i and stays put.
                    push((node, i + 1))
            visited += 1
            if i == n:
                if node.dests:
                    result.update(node.dests)
            else:
                children = node.children
                if children is not None:
                    nxt = children.get(words[i])
                    if nxt is not None:
                        push((nxt, i + 1))
                if node.star is not None:
                    push((node.star, i + 1))
            if node.hash is not None:
                # Entering '#' consumes nothing yet; the hash node's own
                # state then decides how many words it swallows.
                push((node.hash, i))
        return result, visited
