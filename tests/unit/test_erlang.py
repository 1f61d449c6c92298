"""Erlang term printing for error texts (amqpd/wire/erlang.py): floats as RabbitMQ prints them
(measured with Erlang/OTP 25, RabbitMQ 3.10.8's runtime) and field values as ~tp terms."""
import datetime
import random
import shutil
import struct
import subprocess
from decimal import Decimal

import pytest

from amqpd.wire import erlang
from amqpd.wire.tables import Short

# (value, what io:format("~p", [Value]) prints on OTP 25)
MEASURED = [
    (0.0, "0.0"),
    (-0.0, "-0.0"),
    (1.0, "1.0"),
    (10.0, "10.0"),
    (100.0, "100.0"),
    (1000.0, "1.0e3"),
    (10000.0, "1.0e4"),
    (123456.0, "123456.0"),
    (1234567.0, "1234567.0"),
    (1000000000000000.0, "1.0e15"),
    (1e+16, "1.0e16"),
    (1e+17, "1.0e17"),
    (1e+21, "1.0e21"),
    (1e+22, "1.0e22"),
    (1e+23, "1.0e23"),
    (0.1, "0.1"),
    (0.01, "0.01"),
    (0.001, "0.001"),
    (0.0001, "0.0001"),
    (1e-05, "1.0e-5"),
    (1.5e-07, "1.5e-7"),
    (1.5, "1.5"),
    (25000000000.0, "2.5e10"),
    (123.456, "123.456"),
    (1e+300, "1.0e300"),
    (5e-324, "5.0e-324"),
    (1.7976931348623157e+308, "1.7976931348623157e308"),
    (0.5, "0.5"),
    (3.14159, "3.14159"),
    (1e+100, "1.0e100"),
    (1.2345678901234568e+16, "1.2345678901234568e16"),
    (100.5, "100.5"),
    (1000.5, "1000.5"),
    (0.000123, "1.23e-4"),
    (9007199254740992.0, "9.007199254740992e15"),
    (1.152921504606847e+18, "1.152921504606847e18"),
    (1234.0, "1234.0"),
    (12340.0, "12340.0"),
    (123400.0, "1.234e5"),
    (100000.0, "1.0e5"),
    (1000000.0, "1.0e6"),
    (10000000.0, "1.0e7"),
    (317.0, "317.0"),
    (417.178, "417.178"),
    (4807460.786671551, "4807460.786671551"),
    (982.2, "982.2"),
    (707.2521, "707.2521"),
    (236150.24058018718, "236150.24058018718"),
    (869166.3205344582, "869166.3205344582"),
    (328234.383915331, "328234.383915331"),
    (-666101.9457457724, "-666101.9457457724"),
    (211616.2, "211616.2"),
    (-5295.432, "-5295.432"),
    (453.0, "453.0"),
    (23279.81, "23279.81"),
    (406.341, "406.341"),
    (-179466000000.0, "-1.79466e11"),
    (69891250000.0, "6.989125e10"),
    (711.6, "711.6"),
    (0.0002919438, "2.919438e-4"),
    (685425.4014478, "685425.4014478"),
    (965.98, "965.98"),
    (-333779.9829811023, "-333779.9829811023"),
    (541143.6, "541143.6"),
    (-957947.1542341174, "-957947.1542341174"),
    (-773275.7063527347, "-773275.7063527347"),
    (-397402.62337950873, "-397402.62337950873"),
    (97996.02512819669, "97996.02512819669"),
    (-8.80575385193776e+51, "-8.80575385193776e51"),
    (701925.8439076226, "701925.8439076226"),
    (1.7480582033588617e-48, "1.7480582033588617e-48"),
    (-399558.3701874772, "-399558.3701874772"),
    (38160.31589880297, "38160.31589880297"),
    (221.4098, "221.4098"),
    (-97.0789, "-97.0789"),
    (6.509301643173562e+140, "6.509301643173562e140"),
    (2.228683492326157e-192, "2.228683492326157e-192"),
    (275.2, "275.2"),
    (427241.124836636, "427241.124836636"),
    (202893.80803401023, "202893.80803401023"),
    (3.669803099693382e+249, "3.669803099693382e249"),
    (3.38549042039994e-125, "3.38549042039994e-125")
,
]


@pytest.mark.parametrize("value,text", MEASURED)
def test_floats_print_as_erlang_does(value, text):
    assert erlang.float_text(value) == text


@pytest.mark.skipif(shutil.which("erl") is None, reason="no Erlang runtime to compare with")
def test_random_floats_print_as_the_local_erlang_does(tmp_path):
    rng = random.Random(20240607)
    values = []
    while len(values) < 2000:
        kind = rng.random()
        if kind < 0.4:
            v = struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0]
        elif kind < 0.7:
            v = float(rng.randrange(-10 ** 8, 10 ** 8)) * 10.0 ** rng.randrange(-12, 12)
        else:
            v = round(rng.uniform(-1e4, 1e4), rng.randrange(0, 6))
        if v == v and abs(v) != float("inf"):
            values.append(v)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(struct.pack(">d", v).hex() for v in values))
    script = ("{ok, B} = file:read_file(\"%s\"), "
              "[io:format(\"~p~n\", [binary_to_term(<<131, 70, (binary:decode_hex(H))/binary>>)])"
              " || H <- binary:split(B, <<\"\\n\">>, [global])], halt()." % src)
    out = subprocess.run(["erl", "-noshell", "-eval", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert [erlang.float_text(v) for v in values] == out


@pytest.mark.parametrize("value,text", [
    (None, "undefined"), (True, "true"), (Short(2000), "2000"), (1000.0, "1.0e3"),
    (Decimal("1.5"), "{1,15}"), (Decimal("-1"), "{0,4294967295}"), ("ab", '<<"ab">>'),
    (b"\x01\x02", "<<1,2>>"), ("é", '<<"é"/utf8>>'),
    (datetime.datetime(1970, 1, 1, 0, 0, 5, tzinfo=datetime.timezone.utc), "5"),
    ({"k": "v", "n": Short(1)}, '[{<<"k">>,longstr,<<"v">>},{<<"n">>,short,1}]'),
    ([1, None], "[{signedint,1},{void,undefined}]"),
])
def test_terms(value, text):
    assert erlang.term(value) == text


def test_value_text_shows_strings_as_text():
    assert erlang.value_text("ae") == "ae"
    assert erlang.value_text(b"\xff\xfe") == "ÿþ"
    assert erlang.value_text(1000.0) == "1.0e3"
