"""The load test's job mix: parsing flags and TOML, errors that name the value, the draws, and
the workflow shapes."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs.loadtest.errors import MixError
from asyncjobs.loadtest.jobs import build_app, build_workflow
from asyncjobs.loadtest.mix import Shape, SleepDist, build_mix, parse_sleep


def test_flags_give_the_fractions_and_each_jobs_behaviour() -> None:
    mix = build_mix(mix="io=0.7,cpu=0.2,workflow=0.1", io_sleep="uniform:0.001:0.05",
                    cpu_work="20000", fail_rate="0.01", workflow="chord:5")  # fmt: skip
    assert mix.fractions == {"io": 0.7, "cpu": 0.2, "workflow": 0.1}
    assert mix.io_sleep == SleepDist("uniform", 0.001, 0.05)
    assert (mix.cpu_work, mix.fail_rate, mix.workflow) == (20000, 0.01, Shape("chord", 5))
    assert mix.workflow.jobs == 6  # five in the group, and the callback


def test_without_flags_the_mix_is_io_jobs_only() -> None:
    mix = build_mix()
    assert mix.fractions == {"io": 1.0}
    assert mix.fail_rate == 0.0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"mix": "io=0.7,cpu=0.5"}, "add up to 1.2, not 1"),
        ({"mix": "io=0.5,gpu=0.5"}, "unknown kind 'gpu'"),
        ({"mix": "io=-0.5,cpu=1.5"}, "io=-0.5 is not a fraction"),
        ({"mix": "io=half"}, "'half' is not a number"),
        ({"mix": "io"}, "'io' is not kind=fraction"),
        ({"mix": "io=0.5,io=0.5"}, "io is given twice"),
        ({"io_sleep": "normal:3"}, "unknown distribution 'normal'"),
        ({"io_sleep": "uniform:0.5:0.1"}, "low bound is above the high one"),
        ({"io_sleep": "-1"}, "-1 s is outside"),
        ({"io_sleep": "exp:inf"}, "not a finite number"),
        ({"cpu_work": "0"}, "--cpu-work '0' is not a loop count"),
        ({"fail_rate": "2"}, "--fail-rate '2' is not a fraction"),
        ({"workflow": "star:3"}, "--workflow 'star:3' is not a workflow shape"),
        ({"workflow": "chain:0"}, "0 steps is out of range"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_flag_and_the_value(
    flags: dict[str, str], named: str
) -> None:
    with pytest.raises(MixError) as caught:
        build_mix(**flags)
    message = str(caught.value)
    assert named in message
    assert message.startswith("--" + next(iter(flags)).replace("_", "-"))
    assert "\n" not in message


def test_a_toml_file_gives_the_mix_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "mix.toml"
    path.write_text('io_sleep = "exp:0.02"\nfail_rate = 0.05\n[mix]\nio = 0.5\ncpu = 0.5\n')
    mix = build_mix(file=str(path), fail_rate="0.1")
    assert mix.fractions == {"io": 0.5, "cpu": 0.5}
    assert mix.io_sleep == SleepDist("exp", 0.02)
    assert mix.fail_rate == 0.1


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("mix = [1, 2\n", "is not valid TOML"),
        ("speed = 3\n", "unknown key 'speed'"),
        ("[mix]\nio = 0.5\ncpu = 0.4\n", "the fractions add up to 0.9"),
        ("mix = 3\n", "mix in"),
    ],
)
def test_a_bad_toml_file_is_one_sentence_naming_the_file(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "mix.toml"
    path.write_text(text)
    with pytest.raises(MixError) as caught:
        build_mix(file=str(path))
    assert named in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_toml_file_says_so() -> None:
    with pytest.raises(MixError, match="cannot be read"):
        build_mix(file="/nonexistent/mix.toml")


def test_draws_follow_the_fractions_and_never_pick_a_kind_at_zero() -> None:
    mix = build_mix(mix="io=0.75,cpu=0.25,workflow=0")
    rng = random.Random(7)
    counts = Counter(mix.choose(rng) for _ in range(20_000))
    assert counts["workflow"] == 0
    assert counts["io"] / 20_000 == pytest.approx(0.75, abs=0.02)


def test_the_same_seed_draws_the_same_sequence() -> None:
    mix = build_mix(mix="io=0.5,cpu=0.3,workflow=0.2", io_sleep="exp:0.01")
    a, b = random.Random(42), random.Random(42)
    assert [(mix.choose(a), mix.io_sleep.sample(a)) for _ in range(100)] == [
        (mix.choose(b), mix.io_sleep.sample(b)) for _ in range(100)
    ]


@given(st.floats(min_value=0, max_value=10), st.floats(min_value=0, max_value=10), st.integers())
def test_uniform_sleeps_stay_within_their_bounds(a: float, b: float, seed: int) -> None:
    lo, hi = sorted((a, b))
    dist = parse_sleep(f"uniform:{lo!r}:{hi!r}", "--io-sleep")
    assert lo <= dist.sample(random.Random(seed)) <= hi


@pytest.mark.parametrize(
    ("shape", "jobs", "edges"),
    [(Shape("chain", 4), 4, 3), (Shape("group", 5), 5, 0), (Shape("chord", 3), 4, 3)],
)
def test_each_workflow_shape_has_its_jobs_and_edges(shape: Shape, jobs: int, edges: int) -> None:
    app = build_app()
    wf = build_workflow(app, shape, [(0.0, False)] * shape.jobs)
    assert len(wf.steps) == jobs
    assert sum(len(step.after) for step in wf.steps) == edges
    assert {step.name for step in wf.steps} == {"lt_io"}
