"""Random JSON-like payloads through a real node, on both stores (Hypothesis).

For arguments, results and error texts holding anything a caller might pass (NUL characters,
lone surrogates, ints beyond 64 bits, NaN and infinities, floats jsonb turns into ints, deep
nesting, big strings): either the value is refused at its source with a sentence naming the
job and where it sits, or it comes back equal; an error text always comes back, made storable.
Never a stuck batch: a job that succeeds alongside each example is always written.

The model of what Postgres keeps (``keeps``) is written here, independently of
asyncjobs.serialization. One app per store serves every example, from a loop in a thread.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjobs import App, JobFailedError, PayloadEncodeError, PayloadTooLargeError, Settings

T = TypeVar("T")
TIMEOUT = 20.0
ORJSON_MAX_DEPTH = 254

# Strings over the whole of Unicode, surrogates and NUL included, sometimes big.
texts = st.text(st.characters(), max_size=30) | st.builds(
    lambda s, n: s * n, st.text(st.characters(), min_size=1, max_size=4), st.integers(1, 20_000)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN, infinities, and every size of float
    | st.sampled_from([1e16, -1.5e17, 2.0**63, 2.0**64, 1e300, 5e-324, -0.0])
    | texts
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


payloads = values | st.integers(ORJSON_MAX_DEPTH - 4, ORJSON_MAX_DEPTH + 4).map(nested)


def text_keeps(s: str) -> bool:
    return "\x00" not in s and not any("\ud800" <= c <= "\udfff" for c in s)


def keeps(value: Any, depth: int = 0) -> bool:
    """Whether Postgres stores ``value`` and gives it back equal (the model)."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, float):
        return math.isfinite(value) and not 1e16 <= abs(value) < 2**64
    if isinstance(value, str):
        return text_keeps(value)
    if depth >= ORJSON_MAX_DEPTH:
        return False
    if isinstance(value, list):
        return all(keeps(v, depth + 1) for v in value)
    return all(text_keeps(k) and keeps(v, depth + 1) for k, v in value.items())


def storable(text: str) -> str:
    """What an error text is stored as: NUL replaced (with a note), surrogates escaped."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd") + " [asyncjobs replaced NUL characters"
    return text.encode("utf-8", "backslashreplace").decode()


class Runner:
    """An app started once, in its own event loop on a thread; examples run coroutines there."""

    def __init__(self, settings: Settings) -> None:
        self.app = App(settings=settings.replace(max_payload_bytes=4 * 1024 * 1024))
        self.values: dict[int, Any] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

        @self.app.job()
        async def echo(value: Any) -> Any:
            return value

        @self.app.job()
        async def give(key: int) -> Any:
            return self.values.pop(key)

        @self.app.job()
        async def fail_with(key: int) -> None:
            raise RuntimeError(self.values.pop(key))

        @self.app.job()
        async def ok() -> str:
            return "ok"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(TIMEOUT * 2)

    def __enter__(self) -> Runner:
        self.thread.start()
        self.run(self.app.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.app.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def runner(any_settings: Settings) -> Iterator[Runner]:
    with Runner(any_settings.replace(concurrency=50)) as r:
        yield r


async def through_a_node(r: Runner, value: Any, text: str, key: int) -> None:
    app = r.app
    r.values[key], r.values[-key] = value, text
    bystander = await app.enqueue("ok")
    give_id = await app.enqueue("give", key)
    fail_id = await app.enqueue("fail_with", -key)

    # Arguments: refused at enqueue with the path, or given to the job unchanged. They sit two
    # levels deep in what is stored ([args, kwargs]), so they may nest two levels less.
    refusal: Exception | None = None
    try:
        echo_id = await app.enqueue("echo", value)
    except (PayloadEncodeError, PayloadTooLargeError) as exc:
        refusal = exc
    if isinstance(refusal, PayloadEncodeError):
        assert not keeps(value, depth=2), f"refused a value Postgres keeps: {refusal}"
        assert "of job 'echo'" in str(refusal)
        assert refusal.path.startswith("args[0]")
    elif refusal is None:
        assert keeps(value, depth=2), f"accepted a value Postgres cannot keep: {value!r:.200}"
        assert await app.result(echo_id, timeout=TIMEOUT) == value
        assert (await app.get(echo_id)).args == [value]

    # Results: the job fails with the path, or its result comes back unchanged.
    failure: JobFailedError | None = None
    try:
        result = await app.result(give_id, timeout=TIMEOUT)
    except JobFailedError as exc:
        failure = exc
    if failure is None:
        assert keeps(value), f"accepted a result Postgres cannot keep: {value!r:.200}"
        assert result == value
    elif not failure.error_type.endswith("PayloadTooLargeError"):
        assert failure.error_type.endswith("PayloadEncodeError"), failure
        assert not keeps(value), f"refused a result Postgres keeps: {failure}"
        assert failure.error_message.startswith("cannot encode result")
        assert "of job 'give'" in failure.error_message

    # Error texts: always stored, made storable, never refused.
    with pytest.raises(JobFailedError) as failed:
        await app.result(fail_id, timeout=TIMEOUT)
    assert failed.value.error_type == "RuntimeError"
    assert failed.value.error_message.startswith(storable(text)[:3000])

    # Written alongside: never held back.
    assert await app.result(bystander, timeout=TIMEOUT) == "ok"


def test_random_payloads_are_refused_at_the_source_or_round_trip_and_never_stall(
    runner: Runner,
) -> None:
    keys = iter(range(1, 10**9))

    @settings(
        max_examples=60 if runner.app.settings.dsn != "memory://" else 150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(value=payloads, text=texts)
    def check(value: Any, text: str) -> None:
        runner.run(through_a_node(runner, value, text, next(keys)))

    check()
    assert runner.app.node.completer.buffered == 0
