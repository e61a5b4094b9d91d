"""billing.varint against protobuf's own varint writer, at every width and both table edges."""
import random

import pytest
from google.protobuf.internal.encoder import _VarintBytes

from billing.varint import varint

EDGES = [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 0x4001, (1 << 28) - 1, 1 << 28, (1 << 64) - 1]


@pytest.mark.parametrize("n", EDGES + [(1 << bits) + random.Random(bits).getrandbits(bits) for bits in range(1, 64)])
def test_varint_is_protobufs(n):
    assert varint(n) == _VarintBytes(n)


def test_every_value_the_tables_hold():
    assert all(varint(n) == _VarintBytes(n) for n in range(1 << 15))
