"""The field-table codec (amqpd/wire/tables.py): every valid table decodes and encodes back to
the very same bytes, values equal what pamqp decodes, malformed bytes are refused by both the
decoder and the validating walk (and only with TableError), and plain Python values encode the
way RabbitMQ and the common clients expect. Importing amqpd leaves pamqp's settings alone."""
import datetime
import decimal
import math
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pamqp import decode as pamqp_decode

from amqpd.wire import tables as T

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- a reference builder of wire bytes, independent of the codec under test ----------------------
def _len(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


FIXED = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I", "l": ">q", "L": ">q"}
RANGES = {"b": (-128, 127), "B": (0, 255), "s": (-2 ** 15, 2 ** 15 - 1), "u": (0, 2 ** 16 - 1),
          "I": (-2 ** 31, 2 ** 31 - 1), "i": (0, 2 ** 32 - 1), "l": (-2 ** 63, 2 ** 63 - 1),
          "L": (-2 ** 63, 2 ** 63 - 1)}

keys = st.one_of(st.text(max_size=20).map(lambda s: s.encode()).filter(lambda b: len(b) <= 255),
                 st.binary(max_size=8))


def scalar_wire():
    ints = [st.integers(*RANGES[tag]).map(lambda v, tag=tag: tag.encode()
                                           + struct.pack(FIXED[tag], v)) for tag in FIXED]
    return st.one_of(
        *ints,
        st.sampled_from([b"t\x00", b"t\x01", b"V"]),
        st.binary(min_size=4, max_size=4).map(lambda b: b"f" + b),      # any bits, NaNs too
        st.binary(min_size=8, max_size=8).map(lambda b: b"d" + b),
        st.binary(min_size=8, max_size=8).map(lambda b: b"T" + b),      # up to 2**64 - 1
        st.binary(min_size=5, max_size=5).map(lambda b: b"D" + b),      # any scale, mantissa
        st.text(max_size=30).map(lambda s: b"S" + _len(s.encode())),
        st.binary(max_size=30).map(lambda b: b"S" + _len(b)),           # not always UTF-8
        st.binary(max_size=30).map(lambda b: b"x" + _len(b)))


def wire_value():
    return st.recursive(
        scalar_wire(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=5).map(lambda vs: b"A" + _len(b"".join(vs))),
            st.dictionaries(keys, inner, max_size=5).map(lambda d: b"F" + _len(_entries(d)))),
        max_leaves=25)


def _entries(d: dict) -> bytes:
    return b"".join(bytes([len(k)]) + k + v for k, v in d.items())


wire_tables = st.dictionaries(keys, wire_value(), max_size=8).map(_entries)


# -- round trip ----------------------------------------------------------------------------------
@SETTINGS
@given(wire_tables)
def test_decode_then_encode_is_byte_identical(entries):
    raw = _len(entries)
    table, end = T.decode_field_table(raw)
    assert end == len(raw)
    assert T.encode_table(table) == raw
    T.check_table(raw, 4, len(raw))          # the validating walk accepts it too


@SETTINGS
@given(wire_tables)
def test_values_equal_what_pamqp_decodes(entries):
    raw = _len(entries)
    ours = T.decode_field_table(raw)[0]
    try:
        theirs = pamqp_decode.field_table(raw)[1]
    except (ValueError, OverflowError, OSError):
        return       # pamqp cannot read it (a key that is not UTF-8, a huge timestamp)
    assert _normal(ours) == _normal(theirs)


def _normal(value):
    """Values compared across decoders: NaNs made comparable; pamqp reads a timestamp above
    2**32 as milliseconds, so those are left out; pamqp's 'f' is a plain float."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if not _skip(v)}
    if isinstance(value, list):
        return [_normal(v) for v in value if not _skip(v)]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return (type(value).__name__, bytes(value))
    return value


def _skip(value) -> bool:
    if isinstance(value, T.FarTimestamp):
        return True
    return isinstance(value, datetime.datetime) and value.timestamp() > 0xFFFFFFFF


def test_each_tag_decodes_to_its_type():
    cases = {b"b\xff": (T.Byte, -1), b"B\xff": (T.UnsignedByte, 255),
             b"s\xff\xfe": (T.Short, -2), b"u\xff\xfe": (T.UnsignedShort, 65534),
             b"I\xff\xff\xff\xfe": (T.SignedInt, -2), b"i\xff\xff\xff\xfe": (T.UnsignedInt,
                                                                             2 ** 32 - 2),
             b"l" + struct.pack(">q", -3): (T.Long, -3), b"L" + struct.pack(">q", 3): (T.LongL, 3)}
    for raw, (cls, value) in cases.items():
        got = T.decode_table(b"\x01k" + raw)["k"]
        assert type(got) is cls and got == value
    assert type(T.decode_table(b"\x01kf" + struct.pack(">f", 0.5))["k"]) is T.Float
    double = T.decode_table(b"\x01kd" + struct.pack(">d", 0.1))["k"]
    assert type(double) is float and double == 0.1
    assert T.decode_table(b"\x01kT" + struct.pack(">Q", 2 ** 40))["k"] == T.FarTimestamp(2 ** 40)
    assert T.decode_table(b"\x01kT" + struct.pack(">Q", 86400))["k"] == datetime.datetime(
        1970, 1, 2, tzinfo=datetime.timezone.utc)
    assert T.decode_table(b"\x01kD\x02\xff\xff\xff\x85")["k"] == decimal.Decimal("-1.23")
    assert T.decode_table(b"\x01kS\x00\x00\x00\x02\xff\xfe")["k"] == b"\xff\xfe"
    assert T.decode_table(b"\x01kx\x00\x00\x00\x01a")["k"] == bytearray(b"a")
    assert T.decode_table(b"\x01\xffV") == {b"\xff": None}     # a key that is not UTF-8


def test_type_names_are_rabbitmqs():
    raw = T.encode_table({"b": T.Byte(1), "s": T.Short(1), "f": T.Float(1.5), "d": 1.5,
                          "l": T.Long(1), "S": "x", "x": bytearray(b"x"), "D": decimal.Decimal(1),
                          "A": [], "F": {}, "V": None, "t": True,
                          "T": datetime.datetime(2020, 1, 1)})
    names = {k: T.type_name(v) for k, v in T.decode_field_table(raw)[0].items()}
    assert names == {"b": "byte", "s": "short", "f": "float", "d": "double", "l": "long",
                     "S": "longstr", "x": "binary", "D": "decimal", "A": "array", "F": "table",
                     "V": "void", "t": "bool", "T": "timestamp"}
    assert (T.type_name(5), T.type_name(2 ** 40)) == ("signedint", "long")


def test_first_of_two_equal_keys_wins():
    assert T.decode_table(b"\x01kt\x01\x01kt\x00") == {"k": True}


def test_a_true_other_than_one_is_written_back_as_one():
    # RabbitMQ reads any non-zero octet as true and writes 1, as this codec does
    assert T.encode_table(T.decode_table(b"\x01kt\x02")) == _len(b"\x01kt\x01")


# -- plain Python values ---------------------------------------------------------------------------
@pytest.mark.parametrize("value,wire", [
    (1, b"I\x00\x00\x00\x01"), (-(2 ** 31), b"I\x80\x00\x00\x00"),
    (2 ** 31, b"l" + struct.pack(">q", 2 ** 31)), (T.Long(1), b"l" + struct.pack(">q", 1)),
    (True, b"t\x01"), (0.1, b"d" + struct.pack(">d", 0.1)), (1e300, b"d" + struct.pack(">d", 1e300)),
    ("é", b"S\x00\x00\x00\x02\xc3\xa9"), (b"\xff", b"S\x00\x00\x00\x01\xff"),
    (bytearray(b"\x00"), b"x\x00\x00\x00\x01\x00"), (None, b"V"),
    (decimal.Decimal("1.50"), b"D\x02\x00\x00\x00\x96"), (decimal.Decimal("1E+2"), b"D\x00\x00\x00\x00d"),
    (datetime.datetime(1970, 1, 1, 0, 1), b"T" + struct.pack(">Q", 60)),
    ([1, "a"], b"A\x00\x00\x00\x0bI\x00\x00\x00\x01S\x00\x00\x00\x01a"),
    ({"k": False}, b"F\x00\x00\x00\x04\x01kt\x00"),
])
def test_plain_values_encode_as_clients_send_them(value, wire):
    assert T.encode_table({"v": value}) == _len(b"\x01v" + wire)


@pytest.mark.parametrize("value", [2 ** 64, T.Short(70000), T.Float(1e300), object(),
                                   decimal.Decimal("NaN"), decimal.Decimal("1e-300"),
                                   datetime.datetime(1960, 1, 1), "\ud800"])
def test_unwritable_values_raise_table_error(value):
    with pytest.raises(T.TableError):
        T.encode_table({"v": value})


def test_escaped_bytes_go_back_as_they_came():
    assert T.encode_table({"k": b"\xff".decode("utf-8", "surrogateescape")}) == \
        _len(b"\x01kS\x00\x00\x00\x01\xff")


# -- malformed input -------------------------------------------------------------------------------
@pytest.mark.parametrize("entries", [
    b"\x01kz\x00",                          # unknown field type
    b"\x01k\x00",                           # pamqp's undocumented void: RabbitMQ refuses it
    b"\x01kU\x00\x01",                      # pika's 'U' short: RabbitMQ refuses it
    b"\x01kS\x00\x00\x00\x05ab",            # longstr past the end
    b"\x05ab",                              # field name past the end
    b"\x01k",                               # no value
    b"\x01kI\x00\x01",                      # integer cut short
    b"\x01kA\x00\x00\x00\x02z\x00",         # bad type inside an array
    b"\x01kF\x00\x00\x00\x04\x01jQ\x00",    # bad type inside a nested table
    b"\x01kF\x00\x00\x00\x02\x01jV",        # nested table longer than its length
])
def test_malformed_tables_are_refused(entries):
    with pytest.raises(T.TableError):
        T.decode_table(entries)
    with pytest.raises(T.TableError):
        T.check_table(entries, 0, len(entries))


def test_nesting_deeper_than_the_limit_is_refused():
    inner = b""
    for _ in range(T.MAX_DEPTH + 2):
        inner = b"\x01kF" + _len(inner)
    with pytest.raises(T.TableError):
        T.decode_table(inner)
    with pytest.raises(T.TableError):
        T.check_table(inner, 0, len(inner))
    ok = b""
    for _ in range(T.MAX_DEPTH):
        ok = b"\x01kF" + _len(ok)
    T.check_table(ok, 0, len(ok))
    assert T.encode_table(T.decode_table(ok)) == _len(ok)


@SETTINGS
@given(wire_tables, st.data())
def test_damaged_tables_decode_iff_the_walk_accepts_them(entries, data):
    raw = bytearray(entries)
    if raw:
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    raw = bytes(raw)
    try:
        table = T.decode_table(raw)
    except T.TableError:
        table = None
    try:
        T.check_table(raw, 0, len(raw))
        checked = True
    except T.TableError:
        checked = False
    assert checked == (table is not None)
    if table is not None:
        # damage can repeat a key or make a boolean octet 2: writing back normalises those
        # (first key wins, true is 1) and is then stable
        again = T.encode_table(table)
        assert T.encode_table(T.decode_field_table(again)[0]) == again


# -- pamqp is left alone ---------------------------------------------------------------------------
def test_importing_amqpd_leaves_pamqp_settings_alone():
    code = ("import pamqp.encode as E\n"
            "before = (E.table_integer, E.DEPRECATED_RABBITMQ_SUPPORT, E.encode_table_value)\n"
            "import amqpd.node, amqpd.edge.server, amqpd.amqp.connection, amqpd.wire.tables, amqpd.cli\n"
            "assert before == (E.table_integer, E.DEPRECATED_RABBITMQ_SUPPORT, "
            "E.encode_table_value), 'pamqp patched'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_server_properties_encode_the_same_under_any_pamqp_setting():
    """Connection.Start's table is the only one pamqp still encodes for amqpd: strings and
    booleans only, so pamqp's integer setting cannot change it."""
    from pamqp import commands as C, encode as E, frame as F
    from amqpd.amqp.connection import Connection
    props = Connection._server_properties()
    start = C.Connection.Start(server_properties=props, mechanisms="PLAIN", locales="en_US")
    saved = E.DEPRECATED_RABBITMQ_SUPPORT
    try:
        E.support_deprecated_rabbitmq(False)
        plain = F.marshal(start, 0)
        E.support_deprecated_rabbitmq(True)
        deprecated = F.marshal(start, 0)
    finally:
        E.support_deprecated_rabbitmq(saved)
    assert plain == deprecated

    def kinds(value):
        if isinstance(value, dict):
            return set().union(*(kinds(v) for v in value.values())) | {"table"}
        return {type(value).__name__}
    assert kinds(props) <= {"table", "str", "bool"}
