"""The one markdown table renderer of the report and the study (sparsity.experiments.markdown)."""

import math

import pandas as pd

from sparsity.experiments import markdown


def test_cells_format_and_leave_missing_values_empty():
  assert markdown.cell("{:.2f}", 1.234) == "1.23"
  assert markdown.cell("{:,.0f}", 1234567) == "1,234,567"
  assert markdown.cell("{:.2f}", None) == "" and markdown.cell("{:.2f}", math.nan) == ""
  assert markdown.cell("{:.2f}", "2:4") == "2:4"  # a format that does not apply: the text


def test_frame_table():
  frame = pd.DataFrame({"run": ["a", "b"], "loss": [2.5, math.nan]})
  assert markdown.frame_table(frame, [("run", "run", "{}"), ("loss", "final loss", "{:.3f}")]) == (
      "| run | final loss |\n|---|---|\n| a | 2.500 |\n| b |  |")
