"""Ids: UUIDv7, strictly increasing within a process, even when the clock steps back."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from asyncjobs import ids
from asyncjobs.ids import new_id, new_ids


def stamp_ms(value: uuid.UUID) -> int:
    return value.int >> 80


def assert_strictly_increasing(values: list[uuid.UUID]) -> None:
    for earlier, later in itertools.pairwise(values):
        assert earlier < later, f"{earlier} is not below {later}"
        assert earlier.int < later.int


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[int]], None]:
    """Replace the ids module's clock with one that returns the given milliseconds in turn."""

    def install(milliseconds: list[int]) -> None:
        readings: Iterator[int] = iter(milliseconds)
        monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: next(readings) * 10**6))
        monkeypatch.setattr(ids, "_sequence", ids._Sequence())

    return install


def test_ids_are_uuid_version_7_with_the_rfc_variant() -> None:
    for value in [new_id(), *new_ids(50)]:
        assert isinstance(value, uuid.UUID)
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert uuid.UUID(str(value)) == value


def test_ids_from_separate_calls_strictly_increase() -> None:
    made = [new_id() for _ in range(5000)]
    assert_strictly_increasing(made)


def test_ids_within_a_batch_and_across_batches_strictly_increase() -> None:
    made: list[uuid.UUID] = []
    for size in (1, 1000, 0, 7, 3000, 2):
        batch = new_ids(size)
        assert len(batch) == size
        made.extend(batch)
    assert_strictly_increasing(made)
    assert len(set(made)) == len(made)


def test_the_timestamp_prefix_is_close_to_now() -> None:
    before_ms = time.time_ns() // 10**6
    value = new_id()
    after_ms = time.time_ns() // 10**6
    # The counter may borrow the next millisecond when one is full, hence the small margin.
    assert before_ms - 1 <= stamp_ms(value) <= after_ms + 1


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="zero or more"):
        new_ids(-1)


def test_a_batch_that_does_not_fit_in_the_current_millisecond_continues_in_the_next(
    monkeypatch: pytest.MonkeyPatch, fake_clock: Callable[[list[int]], None]
) -> None:
    monkeypatch.setattr(ids, "_COUNTER_LIMIT", 8)
    fake_clock([1000, 1000, 1000])
    first = new_ids(5)
    second = new_ids(5)  # 5 + 5 > 8: the last 3 counters of 1000, then 2 in 1001
    third = new_ids(3)  # the clock still says 1000, but the ids carry on in 1001
    made = first + second + third
    assert_strictly_increasing(made)
    assert [stamp_ms(v) for v in made] == [1000] * 8 + [1001] * 5


def test_a_batch_larger_than_one_millisecond_of_counter_still_increases(
    monkeypatch: pytest.MonkeyPatch, fake_clock: Callable[[list[int]], None]
) -> None:
    monkeypatch.setattr(ids, "_COUNTER_LIMIT", 4)
    fake_clock([1000, 1000])
    batch = new_ids(10)
    assert len(batch) == 10
    assert_strictly_increasing(batch)
    assert_strictly_increasing([*batch, *new_ids(1)])


def counter(value: uuid.UUID) -> int:
    """The 26-bit counter an id carries: 12 bits after the version, 14 after the variant."""
    return (value.int >> 64 & 0xFFF) << 14 | (value.int >> 48 & 0x3FFF)


@pytest.mark.parametrize("read", [new_ids, lambda n: list(ids.ids_as_read(n, []))])
def test_counters_across_a_multiple_of_2_to_the_14_are_consecutive_in_the_layout(
    fake_clock: Callable[[list[int]], None], read: Callable[[int], list[uuid.UUID]]
) -> None:
    # Ids are packed in runs that stop where the counter's low 14 bits wrap (ids._chunk).
    fake_clock([1000, 1000, 1000])
    new_ids(16_380)
    batch = read(40_000)  # crosses 16,384 and 32,768
    assert [counter(v) for v in batch] == list(range(16_380, 56_380))
    assert {stamp_ms(v) for v in batch} == {1000}
    assert {v.version for v in batch} == {7} and {v.variant for v in batch} == {uuid.RFC_4122}
    assert_strictly_increasing(batch)


def test_ids_as_read_appends_each_chunk_before_its_first_id(
    fake_clock: Callable[[list[int]], None],
) -> None:
    fake_clock([1000, 1000])
    made: list[uuid.UUID] = []
    reading = ids.ids_as_read(2_500, made)
    later = new_ids(1)  # reserved after the 2,500, so above all of them, made or not
    first = next(reading)
    assert made[0] == first and len(made) == ids._READ_CHUNK
    rest = list(reading)
    assert made == [first, *rest] and len(made) == 2_500
    assert_strictly_increasing([*made, *later])


def test_a_clock_that_steps_back_still_gives_increasing_ids(
    fake_clock: Callable[[list[int]], None],
) -> None:
    fake_clock([5000, 5000, 4000, 3000, 4999, 5000, 6000])
    made = [new_id(), *new_ids(3), new_id(), *new_ids(2), new_id(), new_id(), new_id()]
    assert_strictly_increasing(made)
    assert stamp_ms(made[0]) == 5000
    assert stamp_ms(made[-1]) == 6000
    # While the clock was behind, ids kept the last millisecond seen rather than going back.
    assert all(stamp_ms(v) >= 5000 for v in made)


def test_ids_made_with_a_fake_clock_carry_its_timestamp(
    fake_clock: Callable[[list[int]], None],
) -> None:
    fake_clock([1_700_000_000_123])
    assert stamp_ms(new_id()) == 1_700_000_000_123
