import pytest

from lora_hub.catalog.query import (
    MAX_CONDITIONS,
    MAX_METRIC_NAME,
    Condition,
    Sort,
    check_metric_name,
    parse_sort,
    parse_where,
)
from lora_hub.errors import InvalidArgumentError


def test_where_parses_fields_and_metrics() -> None:
    assert parse_where("accuracy>=0.8 and rank<=16, dtype=bfloat16 && bleu!=3") == [
        Condition("accuracy", ">=", 0.8, True),
        Condition("rank", "<=", 16.0, False),
        Condition("dtype", "=", "bfloat16", False),
        Condition("bleu", "!=", 3.0, True),
    ]
    assert parse_where('task_type == "CAUSAL_LM"') == [Condition("task_type", "=", "CAUSAL_LM", False)]
    assert parse_where("eval/acc@1 > -1e-3") == [Condition("eval/acc@1", ">", -0.001, True)]
    assert parse_where("  ") == []


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("accuracy", "expected `field op value`"),
        ("accuracy >= ", "expected `field op value`"),
        ("accuracy>=high", "not a number"),
        ("accuracy>=nan", "not a finite number"),
        ("accuracy>=0.8 or rank<4", "expected 'and'"),
        ("accuracy>=0.8 and", "ends with 'and'"),
        ("dtype>=3", "compares with = or != only"),
        ("rank='4'", "compares with numbers"),
        ("accuracy>=0.8; drop table x", "cannot read"),
    ],
)
def test_where_errors(text: str, phrase: str) -> None:
    with pytest.raises(InvalidArgumentError, match=phrase):
        parse_where(text)


def test_sort() -> None:
    assert parse_sort("-accuracy") == Sort("accuracy", True, True)
    assert parse_sort("rank") == Sort("rank", False, False)
    assert parse_sort("-created") == Sort("created", True, False)
    assert parse_sort(None) is None
    with pytest.raises(InvalidArgumentError):
        parse_sort("-1bad")


# --- user trial 2 (shared/reviews/user-trial-2.md) ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("size>50kB", 50_000.0),
        ("size>=2MiB", 2.0 * 2**20),
        ("size<1.5GB", 1.5e9),
        ("size<=7", 7.0),
        ("params>3.6k", 3600.0),
        ("params>1.2M", 1_200_000.0),
        ("params<2b", 2e9),
    ],
)
def test_size_and_params_take_the_units_list_prints(text: str, value: float) -> None:
    """Trial 2 (README mismatches): `--where size>50kB` said "'50kB' is not a number", while `list`
    prints sizes as 21.7 kB and params as 3.6k."""
    (cond,) = parse_where(text)
    assert cond.value == pytest.approx(value) and not cond.is_metric


@pytest.mark.parametrize(("text", "phrase"), [("accuracy>50kB", "not a number"), ("size>5parsecs", "units: b, kb")])
def test_units_belong_to_size_and_params_only(text: str, phrase: str) -> None:
    with pytest.raises(InvalidArgumentError, match=phrase):
        parse_where(text)


def test_row14_the_number_of_conditions_is_limited() -> None:
    """Trial 2, row 14: 2000 conditions reached the database ("Expression tree is too large"). Now the
    parser stops past MAX_CONDITIONS with a message that says so."""
    at_limit = " and ".join(f"m{i}>0" for i in range(MAX_CONDITIONS))
    assert len(parse_where(at_limit)) == MAX_CONDITIONS
    with pytest.raises(InvalidArgumentError, match=f"--where has more than {MAX_CONDITIONS} conditions"):
        parse_where(at_limit + " and rank>1")
    with pytest.raises(InvalidArgumentError, match=f"more than {MAX_CONDITIONS}"):
        parse_where(" and ".join(f"acc>{i}" for i in range(2000)))


def test_row16_a_long_metric_name_is_refused_by_its_length() -> None:
    """Trial 2, row 16: a 10,000-character metric name was echoed whole with "is not valid". Now the
    message gives the length and the limit and shows 20 characters of the name."""
    name = "a" * 10_000
    for refuse in (check_metric_name, lambda n: parse_where(f"{n}>1"), parse_sort):
        with pytest.raises(InvalidArgumentError) as info:
            refuse(name)
        assert (
            info.value.message
            == f"metric name {'a' * 20!r}... is 10,000 characters long; the limit is {MAX_METRIC_NAME}"
        )
    assert check_metric_name("b" * MAX_METRIC_NAME) == "b" * MAX_METRIC_NAME
