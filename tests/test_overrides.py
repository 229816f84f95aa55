"""One reading of a command-line override's value (sparsity.maxtext.overrides.read_value), the same for the sweep's
overrides, collect's config values and collect's table cells: `2:4` is text everywhere, numbers are numbers."""

import pytest

from sparsity.experiments import collect, sweep
from sparsity.maxtext.overrides import read_value

# (text, value): what MaxText (OmegaConf's YAML) reads, except the N:M structure and dates, which stay text.
CASES = [
    ("2:4", "2:4"),  # YAML 1.1: the base-60 integer 124
    ("1:30", "1:30"),
    ('"2:4"', "2:4"),
    ("0.25", 0.25),
    ("3.0e-3", 0.003),
    ("1e-3", 0.001),  # YAML 1.1: text; OmegaConf: a number
    ("-2E+3", -2000.0),
    ("100", 100),
    ("1_000", 1000),
    ("-5", -5),
    ("true", True),
    ("false", False),
    ("geometric", "geometric"),
    ("[1, 2]", [1, 2]),
    ("2024-01-01", "2024-01-01"),  # YAML 1.1: a date; OmegaConf: text
    ("null", None),
    ("", None),
    ("a: b: c", "a: b: c"),  # not valid YAML: the text
]


@pytest.mark.parametrize("text,value", CASES)
def test_read_value(text, value):
  got = read_value(text)
  assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text,value", CASES)
def test_the_sweep_and_collect_read_a_value_alike(text, value, tmp_path):
  base = tmp_path / "base.yml"
  base.write_text("steps: 10\n")
  # the sweep keeps a value that reads as None as its text (passed on to MaxText as given)
  assert sweep.parse_value(text) == (text if value is None else value)
  assert collect.config_values({"base": str(base), "overrides": [f"k={text}"]})["k"] == value
  # a table cell that is text becomes a number when it reads as one, and only then
  is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
  assert collect._number(text) == (value if is_number else text)  # pylint: disable=protected-access
