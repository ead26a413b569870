"""benchmarks/hf_generate.py (issue 16) without running it: the greedy-token match counts, and the stored
GPT-2 report re-rendered from its JSON (the measurement itself is `python -m benchmarks.hf_generate`;
`--size tiny` is its smoke run, about a minute on 2 busy cores, too slow for the suite)."""

import json
import pathlib

import numpy as np
import pytest

from benchmarks import hf_generate

STORED = pathlib.Path(hf_generate.report.RESULTS) / "hf_generate-cpu2.json"


def test_matching_counts_tokens_before_each_rows_first_difference():
    ref = np.arange(12).reshape(3, 4)
    out = ref.copy()
    out[1, 2] = -1  # row 1 diverges at its third token, and stays equal after it
    out[2, 0] = -1  # row 2 at its first
    m = hf_generate.matching(out, ref)
    assert m == {"prefix_match": 4 + 2 + 0, "equal_positions": 10, "total": 12, "first_divergence": 0}
    assert hf_generate.matching(ref, ref)["first_divergence"] is None


@pytest.mark.skipif(not STORED.exists(), reason="no stored hf_generate-cpu2.json")
def test_stored_report_renders_with_goals_bound_and_findings():
    data = json.loads(STORED.read_text())
    md = hf_generate.markdown(data)
    assert {g["goal"] for g in data["goals"]} == {label for label, *_ in hf_generate.GOALS}
    for row in data["rows"]:
        assert row["name"] in md and row["tokens_per_s"] > 0
    assert "Memory-bandwidth bound at batch 1" in md and "## Findings" in md
    assert data["model"]["params"] == 124_439_808 and data["threading"]["threads"] == 2
    # the same weights: genjax float32 reproduces transformers' logits on the prompt
    assert data["logits"]["max_err_genjax_f32_vs_transformers"] < 1e-3
