"""The producer's partitioner picks exactly the partitions aiokafka's (and Java's) would."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2
from hypothesis import given
from hypothesis import strategies as st

from propagator.kafka import murmur2, partition_for


@given(st.binary(max_size=200))
def test_murmur2_matches_the_reference(data: bytes) -> None:
    assert reference_murmur2(data) == murmur2(data)


@given(st.binary(min_size=1, max_size=80), st.integers(min_value=1, max_value=64))
def test_keyed_records_go_where_the_default_partitioner_sends_them(key: bytes, n: int) -> None:
    partitions = list(range(n))
    assert DefaultPartitioner()(key, partitions, partitions) == partition_for(key, partitions)


def test_known_vector() -> None:
    # Kafka's own test vector (UtilsTest.testMurmur2): "21" hashes to -973932308 (signed).
    assert -973932308 & 0xFFFFFFFF == murmur2(b"21")


def test_unkeyed_records_go_to_an_available_partition() -> None:
    assert {2, 3} >= {partition_for(None, [0, 1, 2, 3], [2, 3]) for _ in range(50)}
