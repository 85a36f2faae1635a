"""study/compare.py: which runs of two studies are the same configuration, and the differences
between them, checked against numbers worked out by hand on synthetic results files."""
import json

import pytest
from test_report import fake_results, write

from study import compare


def run(seed, val, test, lr=None, device="Test CPU (2 cores)", method="full", **kw):
    r = fake_results("mrpc", method, 1.0, seed, val, test, **kw)
    r["config"]["lr"] = lr or r["config"]["lr"]
    r["environment"]["device_name"] = device
    return r


@pytest.fixture
def studies(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # mrpc/full/1.0: test @best A 0.80, 0.82, 0.84; B 0.81, 0.85, 0.84 -> B - A = +1, +3, 0: mean 1.33,
    # sd 1.528, t(0.975, 2) = 4.303: half-width 3.795 -> [-2.46, +5.13]; validation A 0.90, B 0.95, 0.92, 0.90
    for seed, (ta, tb, vb) in enumerate([(0.80, 0.81, 0.95), (0.82, 0.85, 0.92), (0.84, 0.84, 0.90)]):
        write(a, run(seed, [0.5, 0.9], [0.5, ta]))
        rb = run(seed, [0.5, vb], [0.5, tb], device="Test GPU")
        rb["config"]["out"], rb["config"]["device"] = "elsewhere", "cuda:0"  # IGNORED: still the same configuration
        write(b, rb)
    # mrpc/bitfit/1.0: A 0.85, 0.86, 0.90; B 0.80, 0.82, 0.84 -> -5, -4, -6: [-7.48, -2.52]; validation equal
    for seed, (ta, tb) in enumerate([(0.85, 0.80), (0.86, 0.82), (0.90, 0.84)]):
        write(a, run(seed, [0.9], [ta], method="bitfit"))
        write(b, run(seed, [0.9], [tb], method="bitfit", device="Test GPU"))
    # the grid row, 6 pairs: |validation| 5, 2, 0, 0, 0, 0 -> mean 1.17, median 0, largest 5 (full, seed 0);
    # |test| 1, 3, 0, 5, 4, 6 -> mean 3.17, median 3.5, largest 6
    copied = run(0, [0.8], [0.7], method="lora")
    copied["copied_from"] = "tune/mrpc-lora-f1-s0-lr0.001"  # a cell of one seed, left out of the grid row
    write(a, copied)
    write(b, run(0, [0.8], [0.6], method="lora", device="Test GPU"))
    write(a, run(3, [0.5, 0.9], [0.5, 0.8], lr=5e-5))  # a rate B never ran: only A
    for seed in (3, 4):
        write(b, run(seed, [0.5, 0.9], [0.5, 0.8], device="Test GPU"))  # seeds A never ran: only B
    for root in (a, b):  # time-budget runs: never paired
        device = "Test CPU (2 cores)" if root == a else "Test GPU"
        write(root, run(0, [0.5, 0.9], [0.5, 0.8], budget=10.0, device=device))
        tuned = run(0, [0.7], [0.6] if root == a else [0.7], lr=1e-4, device=device)  # validation equal, test +10
        write(root / "tune", tuned, "mrpc-full-f1-s0-lr0.0001")
    (a / "tuned.json").write_text(json.dumps({"chosen": {"mrpc": {"full": 1e-4, "bitfit": 1e-3, "lora": 2e-3}}}))
    (b / "tuned.json").write_text(json.dumps({"chosen": {"mrpc": {"full": 2e-4, "bitfit": 1e-3},
                                                         "cola": {"full": 1e-4}}}))
    return a, b


def test_same_configurations_are_paired_and_compared_by_hand(studies):
    a, b = studies
    text = compare.compare(a, b)
    assert "- A: `%s` (Test CPU (2 cores))" % a in text and "- B: `%s` (Test GPU)" % b in text
    assert "| tuning | 1 | 0 | 0 | 0.00 / 0.00 / 0.00 (tune/mrpc-full-f1-s0-lr0.0001) | 10.00 / 10.00 / 10.00 |" in text
    assert "| grid | 6 | 1 | 2 | 1.17 / 0.00 / 5.00 (mrpc-full-f1-s0) | 3.17 / 3.50 / 6.00 |" in text
    assert "leaves out 1 pairs in which a run was copied" in text
    assert "| mrpc | full | 1 | 3 | 82.00 | 83.33 | +1.33 | [-2.46, +5.13] | not distinguishable |" in text
    assert "| mrpc | bitfit | 1 | 3 | 87.00 | 82.00 | -5.00 | [-7.48, -2.52] | differs |" in text
    assert "| mrpc | lora | 1 | 1 | 70.00 | 60.00 | -10.00 | – | one seed |" in text
    assert "1 of the 2 cells with two seeds or more differ" in text and "1 cells have one seed" in text
    # rates: mrpc/full and mrpc/bitfit were chosen by both; full's choices differ
    assert "same rate in 1 of the 2 task x method pairs" in text and "| mrpc | full | 0.0001 | 0.0002 |" in text
    assert "| mrpc | bitfit |" not in text.split("## Rates chosen")[1].split("## Grid cells")[0]


def test_a_study_without_a_tuning_stage_says_so(studies):
    a, b = studies
    (b / "tuned.json").unlink()
    assert "No task x method has a rate chosen in both studies' tuned.json." in compare.compare(a, b)


def test_any_setting_that_changes_results_breaks_the_pair():
    base = run(0, [0.9], [0.8])
    moved = json.loads(json.dumps(base))
    moved["config"].update(out="x", device="cuda:0", resume=True, eval_batch_size=7)
    assert compare.configuration(moved) == compare.configuration(base)
    for key, value in (("lr", 3e-5), ("warmup", 0.1), ("max_length", 64), ("epochs", 9)):
        other = json.loads(json.dumps(base))
        other["config"][key] = value
        assert compare.configuration(other) != compare.configuration(base), key
    cls = json.loads(json.dumps(base))
    cls["pooling"] = "cls"  # the pooling train.py resolved, not the flag ("" = the model's default)
    assert compare.configuration(cls) != compare.configuration(base)


def test_two_studies_with_nothing_in_common_are_an_error(tmp_path):
    write(tmp_path / "a", run(0, [0.9], [0.8]))
    write(tmp_path / "b", run(0, [0.9], [0.8], lr=3e-5))
    with pytest.raises(SystemExit, match=r"no finished run of one study .*a: 1 finished runs; .*b: 1 finished runs"):
        compare.compare(tmp_path / "a", tmp_path / "b")
    with pytest.raises(SystemExit, match=r"nowhere: 0 finished runs"):
        compare.compare(tmp_path / "a", tmp_path / "nowhere")
