import pytest

from lora_hub.catalog.query import Condition, Sort, parse_sort, parse_where
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
