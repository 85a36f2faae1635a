"""study/compare.py: which runs of two studies are the same configuration, and the differences
between them, checked against numbers worked out by hand on synthetic results files."""
import json

import pytest
from test_report import fake_results, write

from study import compare


def run(seed, val, test, lr=None, device="Test CPU (2 cores)", **kw):
    r = fake_results("mrpc", "full", 1.0, seed, val, test, **kw)
    r["config"]["lr"] = lr or r["config"]["lr"]
    r["environment"]["device_name"] = device
    return r


@pytest.fixture
def studies(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # the grid cell mrpc/full/1.0: test @best (the 2nd epoch) A 0.80, 0.82, 0.84; B 0.81, 0.85, 0.84
    # -> B - A = +1, +3, 0: mean 1.33, sd 1.528, t(0.975, 2) = 4.303: half-width 3.795 -> [-2.46, +5.13]
    for seed, (ta, tb, vb) in enumerate([(0.80, 0.81, 0.92), (0.82, 0.85, 0.90), (0.84, 0.84, 0.95)]):
        write(a, run(seed, [0.5, 0.9], [0.5, ta]))
        rb = run(seed, [0.5, vb], [0.5, tb], device="Test GPU")
        rb["config"]["out"], rb["config"]["device"] = "elsewhere", "cuda:0"  # IGNORED: still the same configuration
        write(b, rb)
    # validation @best: |B - A| = 2, 0, 5 -> mean 2.33, median 2, largest 5 (seed 2)
    write(a, run(3, [0.5, 0.9], [0.5, 0.8], lr=5e-5))  # a rate B never ran: only A
    write(b, run(3, [0.5, 0.9], [0.5, 0.8]))  # seed 3 at the default rate: only B
    for root in (a, b):  # time-budget runs: never paired
        write(root, run(0, [0.5, 0.9], [0.5, 0.8], budget=10.0))
        tuned = run(0, [0.7], [0.6] if root == a else [0.7], lr=1e-4,  # tuning: validation equal, test +10
                    device="Test CPU (2 cores)" if root == a else "Test GPU")
        write(root / "tune", tuned, "mrpc-full-f1-s0-lr0.0001")
    (a / "tuned.json").write_text(json.dumps({"chosen": {"mrpc": {"full": 1e-4, "lora": 2e-3}}}))
    (b / "tuned.json").write_text(json.dumps({"chosen": {"mrpc": {"full": 2e-4}, "cola": {"full": 1e-4}}}))
    return a, b


def test_same_configurations_are_paired_and_compared_by_hand(studies):
    a, b = studies
    text = compare.compare(a, b)
    assert "- A: `%s` (Test CPU (2 cores))" % a in text and "- B: `%s` (Test GPU)" % b in text
    assert "| tuning | 1 | 0 | 0 | 0.00 / 0.00 / 0.00 (tune/mrpc-full-f1-s0-lr0.0001) | 10.00 / 10.00 / 10.00 |" in text
    assert "| grid | 3 | 1 | 1 | 2.33 / 2.00 / 5.00 (mrpc-full-f1-s2) | 1.33 / 1.00 / 3.00 |" in text
    assert "| mrpc | full | 1 | 3 | 82.00 | 83.33 | +1.33 | [-2.46, +5.13] | not distinguishable |" in text
    assert "0 of 1 cells differ" in text
    # rates: only mrpc/full was chosen by both, and the two choices differ
    assert "same rate in 0 of the 1 task x method pairs" in text and "| mrpc | full | 0.0001 | 0.0002 |" in text


def test_a_cell_that_differs_is_called_so(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, (ta, tb) in enumerate([(0.80, 0.85), (0.82, 0.86), (0.84, 0.90)]):  # +5, +4, +6: [+2.52, +7.48]
        write(a, run(seed, [0.9], [ta]))
        write(b, run(seed, [0.9], [tb]))
    text = compare.compare(a, b)
    assert "| +5.00 | [+2.52, +7.48] | differs |" in text and "1 of 1 cells differ" in text


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
    with pytest.raises(SystemExit, match="no finished run of one has the configuration"):
        compare.compare(tmp_path / "a", tmp_path / "b")
