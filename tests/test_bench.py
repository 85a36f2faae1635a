"""bench.py runs on CPU, measures both stacks on the same weights, and the reference stack trains
exactly as many parameters as ours for each method (so the comparison is like for like)."""
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from study import bench  # noqa: E402


def test_bench_compares_like_with_like(tmp_path, glue_dir, minilm_dir, monkeypatch):
    calls, used, returned, warm_up = [], [], [], bench.warm_up_batches

    class Batch(dict):  # a warm-up batch that notes when measure() runs it
        def items(self):
            used.append(self.tag)
            return super().items()

    def spy(first, timed):
        calls.append((len(first), len(timed)))
        warm = [Batch(b) for b in warm_up(first, timed)]
        for b in warm:
            b.tag = len(returned)
            returned.append(b.tag)
        return warm

    monkeypatch.setattr(bench, "warm_up_batches", spy)
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
    # every measurement (3 ours, 3 references) warmed up on its timed batches' shapes: training, after the
    # 1 --warmup step, before the 2 timed steps; evaluation, on every batch
    assert calls[0::2] == [(1, 2)] * 6 and all(first == 0 and timed > 0 for first, timed in calls[1::2])
    assert sorted(set(used)) == returned  # and measure() ran every warm-up batch it was given


def test_ratios_compare_a_method_measured_twice_by_its_first_row():
    row = lambda method, ms, mib: {"method": method, "stack": "bertfit", "step_seconds_median": ms / 1e3,  # noqa: E731
                                   "peak_memory_bytes": mib * 2 ** 20, "train_tokens_per_second": 1.0}
    r = bench.ratios([row("full", 200, 100), row("bitfit", 40, 50), row("full", 40, 120)])
    assert r["bitfit_step_vs_full"] == pytest.approx(0.2) and r["bitfit_memory_vs_full"] == 0.5
    assert r["full_step_vs_full"] == 1.0


def test_mask_ratios_average_repeated_rows_and_compare_like_with_like():
    row = lambda method, masks, tps: {"method": method, "stack": "bertfit", "dropout_masks": masks,  # noqa: E731
                                      "train_tokens_per_second": tps}
    r = bench.mask_ratios([row("full", "torch", 100), row("full", "fast", 110), row("bitfit", "fast", 160),
                           row("full", "torch", 100), row("full", "fast", 130), row("bitfit", "fast", 200),
                           {"method": "full", "stack": "hf", "train_tokens_per_second": 1}])
    assert r == {"full_fast_vs_torch_throughput": pytest.approx(1.2), "bitfit_throughput_vs_full[fast]":
                 pytest.approx(1.5)}


def test_warm_up_runs_every_shape_that_is_timed():
    import torch
    batch = lambda n, t: {"input_ids": torch.zeros(n, t, dtype=torch.long)}  # noqa: E731
    first = [batch(32, 40)]
    timed = [batch(32, 40), batch(32, 50), batch(32, 50), batch(16, 50), batch(32, 60)]
    warm = bench.warm_up_batches(first, timed)
    assert [tuple(b["input_ids"].shape) for b in warm] == [(32, 40), (32, 50), (16, 50), (32, 60)]
    assert warm[0] is first[0] and warm[1] is timed[1]  # the batches themselves, not copies
    assert bench.warm_up_batches([], []) == []


def test_memory_tables_per_method_at_the_max_length_and_the_bucketed_length(tmp_path, glue_dir, capsys):
    out = tmp_path / "memory.json"
    result = bench.main(["--model", "minilm", "--memory", "--methods", "full", "bitfit", "qlora", "--max-length",
                         "32", "--data-dir", str(glue_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert "32" in result["tables"] and len(result["tables"]) in (1, 2)  # the bucketed median may equal 32
    rows = {r["method"]: r for r in result["tables"]["32"]}
    assert rows["full"]["frozen_weights"] == 0 and rows["full"]["gradients"] == rows["full"]["trainable_weights"]
    assert rows["bitfit"]["activations"] < rows["full"]["activations"]  # frozen Linears keep no inputs
    assert rows["qlora"]["frozen_weights"] < rows["bitfit"]["frozen_weights"]  # 4-bit query and value
    assert "qlora: the quantized layers' weights take" in capsys.readouterr().out
