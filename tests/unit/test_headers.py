"""Unit tests for headers-exchange matching."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from amqpd.broker.headers import headers_match, validate_binding_args, values_equal

UTC = dt.timezone.utc
MODES = ["all", "any", "all-with-x", "any-with-x"]


# --------------------------------------------------------------------------
# validate_binding_args


@pytest.mark.parametrize(
    "args",
    [
        None,
        {},
        {"foo": "bar"},
        {"x-match": "all"},
        {"x-match": "any"},
        {"x-match": "all-with-x"},
        {"x-match": "any-with-x"},
        {"x-match": "any", "a": 1, "x-b": None},
        # A non-UTF-8 longstr reaches us as bytes but is still a longstr.
        {"x-match": b"all"},
        {"x-match": b"any-with-x"},
    ],
)
def test_validate_ok(args):
    assert validate_binding_args(args) is None


@pytest.mark.parametrize(
    "value, text",
    [
        (
            "foo",
            'Invalid x-match field value <<"foo">>; '
            "expected all, any, all-with-x, or any-with-x",
        ),
        (
            "ALL",
            'Invalid x-match field value <<"ALL">>; '
            "expected all, any, all-with-x, or any-with-x",
        ),
        (
            "",
            'Invalid x-match field value <<"">>; '
            "expected all, any, all-with-x, or any-with-x",
        ),
        (
            "all ",
            'Invalid x-match field value <<"all ">>; '
            "expected all, any, all-with-x, or any-with-x",
        ),
        (
            'a"b\\c',
            'Invalid x-match field value <<"a\\"b\\\\c">>; '
            "expected all, any, all-with-x, or any-with-x",
        ),
        (
            "héllo",
            'Invalid x-match field value <<"héllo"/utf8>>; '
            "expected all, any, all-with-x, or any-with-x",
        ),
        (
            b"\x00\x01",
            "Invalid x-match field value <<0,1>>; "
            "expected all, any, all-with-x, or any-with-x",
        ),
    ],
)
def test_validate_bad_value(value, text):
    assert validate_binding_args({"x-match": value, "k": "v"}) == text


@pytest.mark.parametrize(
    "value, text",
    [
        (5, "Invalid x-match field type signedint (value 5); expected longstr"),
        (1000, "Invalid x-match field type signedint (value 1000); expected longstr"),
        (
            100000,
            "Invalid x-match field type signedint (value 100000); expected longstr",
        ),
        (True, "Invalid x-match field type bool (value true); expected longstr"),
        (None, "Invalid x-match field type void (value undefined); expected longstr"),
        (1.5, "Invalid x-match field type double (value 1.5); expected longstr"),
        (
            bytearray(b"all"),
            'Invalid x-match field type binary (value <<"all">>); expected longstr',
        ),
        (
            Decimal("1.5"),
            "Invalid x-match field type decimal (value {1,15}); expected longstr",
        ),
        (
            ["all"],
            'Invalid x-match field type array (value [{longstr,<<"all">>}]); '
            "expected longstr",
        ),
    ],
)
def test_validate_bad_type(value, text):
    assert validate_binding_args({"x-match": value}) == text


def test_validate_does_not_mutate():
    args = {"x-match": "bogus", "a": 1}
    validate_binding_args(args)
    assert args == {"x-match": "bogus", "a": 1}


# --------------------------------------------------------------------------
# x-match modes and empty bindings


@pytest.mark.parametrize("headers", [None, {}, {"a": 1}, {"x-foo": "bar"}])
def test_no_args_matches_everything(headers):
    assert headers_match(None, headers) is True
    assert headers_match({}, headers) is True


@pytest.mark.parametrize("headers", [None, {}, {"a": 1}])
def test_x_match_only(headers):
    assert headers_match({"x-match": "all"}, headers) is True
    assert headers_match({"x-match": "all-with-x"}, headers) is True
    assert headers_match({"x-match": "any"}, headers) is False
    assert headers_match({"x-match": "any-with-x"}, headers) is False


def test_all_default_when_absent():
    args = {"a": 1, "b": 2}
    assert headers_match(args, {"a": 1, "b": 2}) is True
    assert headers_match(args, {"a": 1, "b": 2, "c": 3}) is True
    assert headers_match(args, {"a": 1}) is False
    assert headers_match(args, {"a": 1, "b": 3}) is False
    assert headers_match(args, None) is False
    assert headers_match(args, {}) is False


def test_all():
    args = {"x-match": "all", "format": "pdf", "type": "report"}
    assert headers_match(args, {"format": "pdf", "type": "report"})
    assert headers_match(args, {"format": "pdf", "type": "report", "x": 1})
    assert not headers_match(args, {"format": "pdf"})
    assert not headers_match(args, {"format": "pdf", "type": "log"})
    assert not headers_match(args, {"format": "zip", "type": "report"})
    assert not headers_match(args, {})


def test_any():
    args = {"x-match": "any", "format": "pdf", "type": "log"}
    assert headers_match(args, {"format": "pdf"})
    assert headers_match(args, {"type": "log"})
    assert headers_match(args, {"format": "zip", "type": "log"})
    assert headers_match(args, {"format": "pdf", "type": "report"})
    assert not headers_match(args, {"format": "zip", "type": "report"})
    assert not headers_match(args, {"other": "pdf"})
    assert not headers_match(args, {})
    assert not headers_match(args, None)


@pytest.mark.parametrize("mode", ["all", "any"])
def test_x_keys_ignored_without_with_x(mode):
    args = {"x-match": mode, "x-foo": "bar"}
    # With the only key ignored, 'all' degenerates to match-everything and
    # 'any' to match-nothing, whatever the message carries.
    expected = mode == "all"
    assert headers_match(args, {"x-foo": "bar"}) is expected
    assert headers_match(args, {"x-foo": "other"}) is expected
    assert headers_match(args, {}) is expected


def test_x_keys_ignored_alongside_normal_keys():
    args = {"x-match": "all", "x-foo": "bar", "a": 1}
    assert headers_match(args, {"a": 1})
    assert headers_match(args, {"a": 1, "x-foo": "nope"})
    args = {"x-match": "any", "x-foo": "bar", "a": 1}
    assert not headers_match(args, {"x-foo": "bar"})
    assert headers_match(args, {"a": 1})


def test_all_with_x():
    args = {"x-match": "all-with-x", "x-foo": "bar", "a": 1}
    assert headers_match(args, {"x-foo": "bar", "a": 1})
    assert not headers_match(args, {"a": 1})
    assert not headers_match(args, {"x-foo": "baz", "a": 1})
    assert not headers_match(args, {"x-foo": "bar"})


def test_any_with_x():
    args = {"x-match": "any-with-x", "x-foo": "bar", "a": 1}
    assert headers_match(args, {"x-foo": "bar"})
    assert headers_match(args, {"a": 1})
    assert headers_match(args, {"x-foo": "bar", "a": 2})
    assert not headers_match(args, {"x-foo": "baz", "a": 2})
    assert not headers_match(args, {})


@pytest.mark.parametrize("mode", MODES)
def test_x_match_key_never_compared(mode):
    # Even in the -with-x modes, 'x-match' itself is not a header to match.
    args = {"x-match": mode, "a": 1}
    assert headers_match(args, {"a": 1}) is True
    assert headers_match(args, {"a": 1, "x-match": "something-else"}) is True


def test_x_match_header_in_message_is_just_a_header():
    args = {"x-match": "any-with-x", "x-match-ish": "v"}
    assert headers_match(args, {"x-match-ish": "v"})


def test_prefix_is_case_sensitive_and_exact():
    # Only the exact "x-" prefix is special; "X-" and "x_" are normal keys.
    args = {"x-match": "all", "X-foo": 1, "x_bar": 2}
    assert not headers_match(args, {})
    assert headers_match(args, {"X-foo": 1, "x_bar": 2})


@pytest.mark.parametrize("mode", ["bogus", 5, None, True])
def test_unrecognised_mode_routes_as_all(mode):
    # validate_binding_args rejects these at bind time; at routing time
    # RabbitMQ treats them as 'all' (legacy bindings).
    args = {"x-match": mode, "a": 1, "b": 2}
    assert headers_match(args, {"a": 1, "b": 2})
    assert not headers_match(args, {"a": 1})


@pytest.mark.parametrize(
    "mode, headers, expected",
    [
        (b"any", {"a": 1}, True),
        (b"any", {"b": 2}, True),
        (b"any", {}, False),
        (b"all", {"a": 1}, False),
        (b"any-with-x", {"x-c": 3}, True),
        (b"all-with-x", {"a": 1, "b": 2}, False),
    ],
)
def test_bytes_mode(mode, headers, expected):
    args = {"x-match": mode, "a": 1, "b": 2, "x-c": 3}
    assert headers_match(args, headers) is expected


def test_bytes_header_keys_match_str_binding_keys():
    assert headers_match({"a": 1}, {b"a": 1})
    assert headers_match({b"a": 1}, {"a": 1})
    assert headers_match({"x-match": "all-with-x", b"x-a": 1}, {"x-a": 1})
    assert not headers_match({"x-match": "all-with-x", b"x-a": 1}, {})
    assert headers_match({"x-match": "all", b"x-a": 1}, {})


def test_does_not_mutate_inputs():
    args = {"x-match": "any", "a": None, "b": "s"}
    headers = {"b": b"s", "c": [1, 2]}
    headers_match(args, headers)
    assert args == {"x-match": "any", "a": None, "b": "s"}
    assert headers == {"b": b"s", "c": [1, 2]}


# --------------------------------------------------------------------------
# Void binding values mean "present with any value"


@pytest.mark.parametrize(
    "value", [None, "", "x", 0, 1, False, True, 1.5, b"\xff", [], {}, Decimal("0")]
)
def test_void_matches_any_present_value(value):
    assert headers_match({"a": None}, {"a": value})
    assert headers_match({"x-match": "any", "a": None}, {"a": value})


def test_void_requires_presence():
    assert not headers_match({"a": None}, {})
    assert not headers_match({"a": None}, {"b": 1})
    assert not headers_match({"x-match": "any", "a": None}, {"b": 1})


def test_void_mixed_with_values():
    args = {"x-match": "all", "a": None, "b": 2}
    assert headers_match(args, {"a": "anything", "b": 2})
    assert not headers_match(args, {"a": "anything", "b": 3})
    assert not headers_match(args, {"b": 2})


def test_void_x_keys_in_with_x_modes():
    assert headers_match({"x-match": "all-with-x", "x-a": None}, {"x-a": 0})
    assert not headers_match({"x-match": "all-with-x", "x-a": None}, {})
    assert headers_match({"x-match": "any-with-x", "x-a": None}, {"x-a": 0})
    # Ignored in plain modes.
    assert headers_match({"x-match": "all", "x-a": None}, {})


def test_header_void_only_matches_void_or_presence():
    # A void header value equals no concrete binding value.
    assert not headers_match({"a": 0}, {"a": None})
    assert not headers_match({"a": ""}, {"a": None})
    assert not headers_match({"a": False}, {"a": None})
    assert headers_match({"a": None}, {"a": None})


# --------------------------------------------------------------------------
# Typed value comparison


@pytest.mark.parametrize(
    "binding, header, expected",
    [
        # strings
        ("pdf", "pdf", True),
        ("pdf", "PDF", False),
        ("", "", True),
        ("pdf", "pdf ", False),
        # str vs bytes with the same UTF-8 content (pamqp gives bytes for
        # non-UTF-8 longstrs; byte arrays decode as bytearray)
        ("pdf", b"pdf", True),
        (b"pdf", "pdf", True),
        ("é", "é".encode(), True),
        ("é", "é".encode("latin-1"), False),
        (b"\xff\xfe", b"\xff\xfe", True),
        ("pdf", bytearray(b"pdf"), True),
        (bytearray(b"pdf"), b"pdf", True),
        ("pdf", memoryview(b"pdf"), True),
        ("1", 1, False),
        (b"1", 1, False),
        ("true", True, False),
        # booleans are never numbers
        (True, True, True),
        (False, False, True),
        (True, False, False),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (0, False, False),
        (True, 1.0, False),
        (1.0, True, False),
        # integers of any width compare by value
        (1, 1, True),
        (1, 2, False),
        (-5, -5, True),
        (2**40, 2**40, True),
        (0, 0, True),
        # int vs float compare numerically (Erlang 1 == 1.0 is true)
        (1, 1.0, True),
        (1.0, 1, True),
        (1, 1.5, False),
        (1.5, 1.5, True),
        (0.0, -0.0, True),
        (float("nan"), float("nan"), False),
        # decimals compare by wire (scale, mantissa) and only with decimals
        (Decimal("1.5"), Decimal("1.5"), True),
        (Decimal("1.50"), Decimal("1.5"), False),
        (Decimal("1.0"), Decimal("1"), False),
        (Decimal("1"), 1, False),
        (1, Decimal("1"), False),
        (Decimal("1.5"), 1.5, False),
        (Decimal("0"), Decimal("-0"), True),
        (Decimal("-2.25"), Decimal("-2.25"), True),
        (Decimal("1E+2"), Decimal("100"), True),
        (Decimal("1"), "1", False),
        # timestamps
        (
            dt.datetime(2024, 1, 1, tzinfo=UTC),
            dt.datetime(2024, 1, 1, tzinfo=UTC),
            True,
        ),
        (
            dt.datetime(2024, 1, 1, tzinfo=UTC),
            dt.datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC),
            False,
        ),
        # naive datetimes are taken as UTC, as pamqp encodes them
        (dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, tzinfo=UTC), True),
        (dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1), True),
        (
            dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            dt.datetime(2024, 1, 1, tzinfo=UTC),
            True,
        ),
        (dt.datetime(2024, 1, 1, tzinfo=UTC), 1704067200, False),
        (1704067200, dt.datetime(2024, 1, 1, tzinfo=UTC), False),
        # tables
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1, "b": "x"}, {"b": "x", "a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": 1, "b": 2}, {"a": 1}, False),
        ({"a": True}, {"a": 1}, False),
        ({"a": "s"}, {"a": b"s"}, True),
        ({"a": {"b": [1, "c"]}}, {"a": {"b": [1, b"c"]}}, True),
        ({"a": None}, {"a": None}, True),
        ({"a": None}, {"a": 0}, False),
        ({}, {}, True),
        ({}, [], False),
        ({"a": 1}, "a", False),
        # arrays
        ([1, 2, 3], [1, 2, 3], True),
        ([1, 2, 3], [3, 2, 1], False),
        ([1, 2], [1, 2, 3], False),
        ([], [], True),
        ([True], [1], False),
        (["a", None], [b"a", None], True),
        ([[1], {"k": "v"}], [[1], {"k": b"v"}], True),
        ([1], 1, False),
        ([], "", False),
        # cross-type mismatches
        ("", 0, False),
        (0, "", False),
        (0, [], False),
        ([], {}, False),
    ],
)
def test_value_comparison(binding, header, expected):
    assert values_equal(binding, header) is expected
    assert headers_match({"k": binding}, {"k": header}) is expected
    assert headers_match({"x-match": "any", "k": binding}, {"k": header}) is expected


def test_any_stops_on_first_match_but_all_needs_every_key():
    args_all = {"x-match": "all", "a": True, "b": 1, "c": "s"}
    args_any = {**args_all, "x-match": "any"}
    headers = {"a": 1, "b": True, "c": b"s"}
    assert not headers_match(args_all, headers)
    # only "c" matches (as bytes), which is enough for 'any'
    assert headers_match(args_any, headers)
    assert not headers_match(args_any, {"a": 1, "b": True, "c": "t"})


@pytest.mark.parametrize("mode", MODES)
def test_large_binding_all_modes(mode):
    args = {"x-match": mode, **{f"k{i}": i for i in range(100)}, "x-z": "z"}
    full = {f"k{i}": i for i in range(100)} | {"x-z": "z"}
    assert headers_match(args, full) is True
    missing_one = dict(full)
    del missing_one["k50"]
    assert headers_match(args, missing_one) is mode.startswith("any")
    only_x = {"x-z": "z"}
    assert headers_match(args, only_x) is (mode == "any-with-x")
    assert headers_match(args, {}) is False
