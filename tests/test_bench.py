"""bench.py runs on CPU, measures both stacks on the same weights, and the reference stack trains
exactly as many parameters as ours for each method (so the comparison is like for like)."""
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from study import bench  # noqa: E402


def test_bench_compares_like_with_like(tmp_path, glue_dir, minilm_dir):
    out = tmp_path / "bench.json"
    result = bench.main(["--model", "minilm", "--methods", "full", "bitfit", "lora", "--steps", "2", "--warmup", "1",
                         "--max-length", "32", "--compare-hf", "--data-dir", str(glue_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {(r["method"], r["stack"]): r for r in result["rows"]}
    assert set(rows) == {(m, s) for m in ("full", "bitfit", "lora") for s in ("bertfit", "hf")}
    for method in ("full", "bitfit", "lora"):
        assert rows[method, "bertfit"]["trainable"] == rows[method, "hf"]["trainable"], method
        assert rows[method, "bertfit"]["steps"] == 2 and rows[method, "bertfit"]["step_seconds_median"] > 0
    # frozen weights keep no optimizer state: AdamW holds 2 fp32 moments per trainable parameter
    for method in ("full", "bitfit", "lora"):
        assert rows[method, "bertfit"]["optimizer_state_bytes"] == 8 * rows[method, "bertfit"]["trainable"]
    assert {"bitfit_step_vs_full", "lora_step_vs_full", "full_tokens_per_second_vs_hf"} <= set(result["ratios"])
    assert result["padding_fraction"]["bertfit"] < result["padding_fraction"]["hf"]
