"""The job mix of a load test: which kinds of job, in what proportions, and how each behaves.

Given on the command line (``--mix io=0.7,cpu=0.2,workflow=0.1 --io-sleep exp:0.02 ...``) or in
a TOML file (``--mix-file mix.toml``); a flag overrides the file's value. Every mistake raises
``MixError`` with one sentence that names the value, where it came from, and what to write.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MixError

KINDS = ("io", "cpu", "workflow")
SLEEP_KINDS = ("fixed", "uniform", "exp")
SHAPES = ("chain", "group", "chord")
MAX_SLEEP_S = 3600.0  # a longer sleep in a load test is a typo
MAX_CPU_WORK = 1_000_000_000
MAX_WORKFLOW_SIZE = 1000  # steps of one workflow (a chord has one more: its callback)
SUM_TOLERANCE = 1e-6

DEFAULT_IO_SLEEP = "exp:0.01"  # seconds: exponential, mean 10 ms
DEFAULT_CPU_WORK = 100_000  # loop iterations of lt_cpu: about 5-10 ms of one core
DEFAULT_WORKFLOW = "chain:4"
TOML_KEYS = ("mix", "io_sleep", "cpu_work", "fail_rate", "workflow")


@dataclass(frozen=True, slots=True)
class SleepDist:
    """How long an IO job sleeps: ``fixed`` (a), ``uniform`` (a to b), ``exp`` (mean a)."""

    kind: str
    a: float
    b: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        # Capped so that one unlucky draw cannot hold a run past its timeout.
        return min(rng.expovariate(1.0 / self.a), MAX_SLEEP_S) if self.a > 0 else 0.0

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        if self.kind == "uniform":
            return f"uniform:{self.a:g}:{self.b:g}"
        return f"exp:{self.a:g}"


@dataclass(frozen=True, slots=True)
class Shape:
    """A workflow of IO jobs: ``chain`` (n in a row), ``group`` (n in parallel) or ``chord``
    (n in parallel, then one callback)."""

    kind: str
    size: int

    @property
    def jobs(self) -> int:
        return self.size + 1 if self.kind == "chord" else self.size

    def __str__(self) -> str:
        return f"{self.kind}:{self.size}"


@dataclass(frozen=True, slots=True)
class Mix:
    """What a load test enqueues. ``fractions`` of submissions per kind add up to 1."""

    fractions: Mapping[str, float]
    io_sleep: SleepDist
    cpu_work: int
    fail_rate: float
    workflow: Shape

    def choose(self, rng: random.Random) -> str:
        """A kind, drawn with the mix's fractions."""
        x = rng.random()
        cumulative = 0.0
        last = KINDS[0]
        for kind in KINDS:
            share = self.fractions.get(kind, 0.0)
            if share <= 0:
                continue
            cumulative += share
            last = kind
            if x < cumulative:
                return kind
        return last  # x fell in the rounding gap below 1

    def describe(self) -> dict[str, Any]:
        return {
            "fractions": {k: v for k, v in self.fractions.items() if v > 0},
            "io_sleep": str(self.io_sleep),
            "cpu_work": self.cpu_work,
            "fail_rate": self.fail_rate,
            "workflow": str(self.workflow),
        }


# -- parsing -----------------------------------------------------------------------------------


def parse_fractions(value: Any, source: str) -> dict[str, float]:
    """``"io=0.7,cpu=0.3"`` (or a table ``{io = 0.7, cpu = 0.3}``) -> fractions by kind."""
    items: list[tuple[str, Any]]
    if isinstance(value, str):
        items = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            kind, sep, number = part.partition("=")
            if not sep:
                raise MixError(
                    f"{source} {value!r}: {part!r} is not kind=fraction; write it like "
                    "io=0.7,cpu=0.2,workflow=0.1"
                )
            items.append((kind.strip(), number.strip()))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise MixError(
            f"{source} is a {type(value).__name__}; write the mix as io=0.7,cpu=0.3 (or a "
            "TOML table: mix = {{ io = 0.7, cpu = 0.3 }})"
        )
    fractions: dict[str, float] = {}
    for kind, raw in items:
        if kind not in KINDS:
            raise MixError(
                f"{source} {_show(value)}: unknown kind {kind!r}; the kinds are {', '.join(KINDS)}"
            )
        if kind in fractions:
            raise MixError(f"{source} {_show(value)}: {kind} is given twice; give it once")
        share = _number(raw, f"{source} {_show(value)}: {kind}")
        if share < 0 or share > 1:
            raise MixError(
                f"{source} {_show(value)}: {kind}={raw} is not a fraction between 0 and 1"
            )
        fractions[kind] = share
    total = sum(fractions.values())
    if not fractions or abs(total - 1.0) > SUM_TOLERANCE:
        raise MixError(
            f"{source} {_show(value)}: the fractions add up to {total:g}, not 1; make them "
            "sum to 1, like io=0.7,cpu=0.2,workflow=0.1"
        )
    return fractions


def parse_sleep(value: Any, source: str) -> SleepDist:
    """``0.01``, ``fixed:0.01``, ``uniform:0.001:0.05`` or ``exp:0.02`` (seconds)."""
    hint = "write fixed:0.01, uniform:0.001:0.05 or exp:0.02 (seconds)"
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = f"fixed:{value}"
    elif isinstance(value, str):
        text = value.strip() if ":" in value else f"fixed:{value.strip()}"
    else:
        raise MixError(f"{source} {value!r} is not a sleep distribution; {hint}")
    kind, *params = text.split(":")
    wanted = {"fixed": 1, "uniform": 2, "exp": 1}.get(kind)
    if wanted is None:
        raise MixError(f"{source} {value!r}: unknown distribution {kind!r}; {hint}")
    if len(params) != wanted:
        raise MixError(f"{source} {value!r}: {kind} takes {wanted} number(s); {hint}")
    numbers = [_number(p, f"{source} {value!r}") for p in params]
    for n in numbers:
        if not 0 <= n <= MAX_SLEEP_S:
            raise MixError(f"{source} {value!r}: {n:g} s is outside 0 to {MAX_SLEEP_S:g} s; {hint}")
    if kind == "uniform" and numbers[0] > numbers[1]:
        raise MixError(f"{source} {value!r}: the low bound is above the high one; {hint}")
    return SleepDist(kind, numbers[0], numbers[1] if len(numbers) > 1 else 0.0)


def parse_shape(value: Any, source: str) -> Shape:
    """``chain:4``, ``group:10`` or ``chord:10``."""
    hint = f"write chain:4, group:10 or chord:10 (1 to {MAX_WORKFLOW_SIZE} steps)"
    if not isinstance(value, str):
        raise MixError(f"{source} {value!r} is not a workflow shape; {hint}")
    kind, sep, size = value.strip().partition(":")
    if kind not in SHAPES or not sep:
        raise MixError(f"{source} {value!r} is not a workflow shape; {hint}")
    try:
        n = int(size)
    except ValueError:
        raise MixError(f"{source} {value!r}: {size!r} is not a whole number; {hint}") from None
    if not 1 <= n <= MAX_WORKFLOW_SIZE:
        raise MixError(f"{source} {value!r}: {n} steps is out of range; {hint}")
    return Shape(kind, n)


def parse_cpu_work(value: Any, source: str) -> int:
    count = value
    if isinstance(value, str) and value.strip().replace("_", "").isdigit():
        count = int(value.strip().replace("_", ""))
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CPU_WORK:
        raise MixError(
            f"{source} {value!r} is not a loop count from 1 to {MAX_CPU_WORK:,}; write, "
            "for example, 100000 (about 5 ms of one core)"
        )
    return count


def parse_fail_rate(value: Any, source: str) -> float:
    rate = _number(value, f"{source}")
    if not 0 <= rate <= 1:
        raise MixError(
            f"{source} {value!r} is not a fraction between 0 and 1; write, for example, 0.01 "
            "for one job in a hundred"
        )
    return rate


def load_file(path: str) -> dict[str, Any]:
    """The values of a mix file, checked for unknown keys (not yet parsed)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MixError(
            f"--mix-file {path!r} cannot be read ({exc.strerror or exc}); check the path"
        ) from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MixError(
            f"--mix-file {path!r} is not valid TOML ({exc}); fix the file (its keys: "
            f"{', '.join(TOML_KEYS)})"
        ) from None
    for key in values:
        if key not in TOML_KEYS:
            raise MixError(
                f"--mix-file {path!r}: unknown key {key!r}; the keys are {', '.join(TOML_KEYS)}"
            )
    return values


def build_mix(
    *,
    file: str | None = None,
    mix: str | None = None,
    io_sleep: str | None = None,
    cpu_work: str | None = None,
    fail_rate: str | None = None,
    workflow: str | None = None,
) -> Mix:
    """The mix from a TOML file (optional) and flags (each overrides the file's value)."""
    values: dict[str, Any] = load_file(file) if file else {}
    flags = {
        "mix": mix,
        "io_sleep": io_sleep,
        "cpu_work": cpu_work,
        "fail_rate": fail_rate,
        "workflow": workflow,
    }

    def pick(key: str, default: Any) -> tuple[Any, str]:
        if flags[key] is not None:
            return flags[key], "--" + key.replace("_", "-")
        if key in values:
            return values[key], f"{key} in {file}"
        return default, "--" + key.replace("_", "-")

    return Mix(
        fractions=parse_fractions(*pick("mix", "io=1")),
        io_sleep=parse_sleep(*pick("io_sleep", DEFAULT_IO_SLEEP)),
        cpu_work=parse_cpu_work(*pick("cpu_work", DEFAULT_CPU_WORK)),
        fail_rate=parse_fail_rate(*pick("fail_rate", 0.0)),
        workflow=parse_shape(*pick("workflow", DEFAULT_WORKFLOW)),
    )


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool):
        raise MixError(f"{where}: {raw!r} is not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise MixError(f"{where}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise MixError(f"{where}: {raw!r} is not a finite number")
    return value


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else repr(dict(value))
