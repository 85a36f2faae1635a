"""sweep.py's tuning stage (the choice on validation, the rates past an edge, tuned.json feeding the
grid, a tuning run copied into it) and --rates, with a stand-in for train.py that scores each rate."""
import json
import textwrap
from pathlib import Path

import pytest

from study import presets, sweep, tuning


TUNE_TRAIN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    a = sys.argv[1:]
    out = Path(a[a.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    with open(Path(sys.argv[0]).parent / "calls.txt", "a") as f:
        f.write(" ".join(a) + "\\n")
    lr = float(a[a.index("--lr") + 1]) if "--lr" in a else None
    val = {3e-4: 0.80, 1e-3: 0.85, 3e-3: 0.85, 2e-4: 0.70, 6e-4: 0.90, 2e-3: 0.60}.get(lr, 0.5)
    score = {"f1": val}
    (out / "results.json").write_text(json.dumps({"status": "complete", "config": {"epochs": 1, "lr": lr},
        "best": {"epoch": 1, "metric": "f1", "val": score, "test": {"f1": 0.1}}}))
""")


def test_a_best_rate_at_an_edge_is_followed_beyond_it(tmp_path, monkeypatch, capsys):
    script = tmp_path / "tune_train.py"  # validation score: higher with the rate for lora, lower for bitfit
    script.write_text(TUNE_TRAIN.replace("val = {", "val = (lr if 'lora' in a else 1 / lr) if lr else {"))
    monkeypatch.setattr(sweep, "TRAIN", script)
    out = tmp_path / "study"
    flags = ["--grid", "cpu", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit,lora", "--stage", "tune",
             "--epochs", "1", "--quiet"]
    assert sweep.main(flags) == 0
    tuned = json.loads((out / "tuned.json").read_text())
    # lora: 2e-4, 6e-4, 2e-3, then 2e-3 x 3.33 = 7e-3 and 7e-3 x 3.5 = 2e-2 (one significant digit), and no further
    assert sorted(map(float, tuned["tried"]["mrpc"]["lora"])) == [2e-4, 6e-4, 2e-3, 7e-3, 2e-2]
    # bitfit: 3e-4, 1e-3, 3e-3, then downwards 3e-4 / 3.33 = 9e-5 and 9e-5 / 3.33 = 3e-5
    assert sorted(map(float, tuned["tried"]["mrpc"]["bitfit"])) == [3e-5, 9e-5, 3e-4, 1e-3, 3e-3]
    assert tuned["chosen"] == {"mrpc": {"bitfit": 3e-5, "lora": 2e-2}}
    assert "best rate at an edge of those tried: mrpc/bitfit 9e-05, mrpc/lora 0.007" in capsys.readouterr().out
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 10
    assert sweep.main(flags) == 0 and len((tmp_path / "calls.txt").read_text().splitlines()) == 10  # all done
    assert presets.beyond_edges([presets.Run("mrpc", "full", 1.0, 0, 1, lr=x, tuning=True) for x in (2e-5, 5e-5)],
                                {"mrpc": {"full": 5e-5}}, presets.PRESETS["cpu"])[0].lr == 1e-4  # 5e-5 x 2.5


def test_tuning_stage_chooses_on_validation_and_feeds_the_grid(tmp_path, monkeypatch, capsys):
    script = tmp_path / "tune_train.py"
    script.write_text(TUNE_TRAIN)
    monkeypatch.setattr(sweep, "TRAIN", script)
    out = tmp_path / "study"
    flags = ["--grid", "cpu", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit,lora", "--fracs", "0.5,1",
             "--seeds", "0,1", "--budget-minutes", "0", "--epochs", "1", "--quiet"]
    assert sweep.main(flags + ["--stage", "main"]) == 2  # no tuned.json yet: an error, nothing runs
    assert "run the tuning stage first" in capsys.readouterr().err and not (tmp_path / "calls.txt").exists()

    assert sweep.main(flags) == 0  # tune, then main
    tuned = json.loads((out / "tuned.json").read_text())
    # bitfit: 1e-3 and 3e-3 tie on validation, the lower rate wins; lora: 6e-4 is best
    assert tuned["chosen"] == {"mrpc": {"bitfit": 1e-3, "lora": 6e-4}} and not tuned["missing"]
    assert tuned["tried"]["mrpc"]["lora"]["0.002"]["val"] == 0.60
    lines = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(lines) == 6 + 2 * 2 * 2 - 2  # 6 tuning runs; the main grid's seed-0 frac-1 cells are copies
    assert all(" --lr 0.001 " in x for x in lines[6:] if "bitfit" in x)
    assert all(" --lr 0.0006 " in x for x in lines[6:] if "lora" in x)
    assert all(" --amp off" in x for x in lines)  # the cpu preset trains in fp32 on every machine
    copied = json.loads((out / "mrpc-lora-f1-s0" / "results.json").read_text())
    assert copied["copied_from"] == "tune/mrpc-lora-f1-s0-lr0.0006" and copied["config"]["lr"] == 6e-4
    assert sorted(p.name for p in (out / "tune").iterdir())[0] == "mrpc-bitfit-f1-s0-lr0.0003"

    assert sweep.main(flags) == 0  # again: everything is done, nothing runs
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == len(lines)
    (out / "tuned.json").write_text(json.dumps({"chosen": {"mrpc": {"bitfit": -1, "lora": 6e-4}}}))
    assert sweep.main(flags + ["--stage", "main"]) == 2
    assert "tuned.json: chosen.mrpc.bitfit = -1: a rate is a finite positive number" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ({"chosen": {"mrpc": {"bitfit": True, "lora": 6e-4}}}, "chosen.mrpc.bitfit = true: a rate is a finite positive"),
    ({"chosen": {"mrpc": {"bitfit": "1e-3", "lora": 6e-4}}}, 'chosen.mrpc.bitfit = "1e-3": a rate is'),
    ({"chosen": {"mrpc": {"bitfit": 0, "lora": 6e-4}}}, "chosen.mrpc.bitfit = 0: a rate is"),
    ({"chosen": {"mrpc": {"bitfit": 1e-3, "lora": None}}}, "chosen.mrpc.lora = null: a rate is"),
    ({"chosen": {"mrpc": {"bitfit": 1e-3, "lora": 6e-4}, "sst2": {"lora": 1e-3}}}, "chosen.sst2: not a task of ours"),
    ({"chosen": {"mrpc": {"bitfit": 1e-3, "lora": 6e-4, "lorra": 1e-3}}}, "chosen.mrpc.lorra: not a method of ours"),
    ({"chosen": {"mrpc": [1e-3]}}, "chosen.mrpc is [0.001], not an object of method: rate"),
    ({"chosen": [["mrpc", "bitfit", 1e-3]]}, 'not a tuned.json written by the tuning stage (no "chosen" object'),
    ([1, 2], "not a tuned.json written by the tuning stage"),
    ("{", "not a tuned.json written by the tuning stage (JSONDecodeError"),
])
def test_a_malformed_tuned_json_is_one_line_naming_the_file(tmp_path, content, message):
    """Issue 27: a rate of `true` trained at lr 1 (Python's True is an int); every entry is checked."""
    path = tmp_path / "tuned.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    p = presets.PRESETS["cpu"]
    p = presets.Preset(**{**p.__dict__, "tasks": ("mrpc",), "methods": ("bitfit", "lora")})
    rates, problem = tuning.read_tuned(path, p)
    assert rates is None and problem.startswith(f"{path}") and "\n" not in problem
    assert message in problem, problem
    path.write_text(json.dumps({"chosen": {"mrpc": {"bitfit": 1e-3, "lora": 6e-4, "bitfit+lora": 2e-4}}}))
    assert tuning.read_tuned(path, p) == ({"mrpc": {"bitfit": 1e-3, "lora": 6e-4, "bitfit+lora": 2e-4}}, None)


def test_a_tuning_run_of_another_configuration_is_not_chosen_from(tmp_path, monkeypatch, capsys):
    """A finished results.json in a tuning directory whose config is another run's (here: 1 epoch where
    the stage asks 2) is neither counted as tried nor copied into the grid."""
    script = tmp_path / "tune_train.py"
    script.write_text(TUNE_TRAIN)
    monkeypatch.setattr(sweep, "TRAIN", script)
    out = tmp_path / "study"
    flags = ["--grid", "cpu", "--out", str(out), "--tasks", "mrpc", "--methods", "lora", "--stage", "tune",
             "--epochs", "1", "--quiet"]
    assert sweep.main(flags) == 0
    capsys.readouterr()
    flags[flags.index("--epochs") + 1] = "2"
    assert sweep.main(flags) == 1
    text = capsys.readouterr().out
    assert text.count("NOT COUNTED") == 3 and "is another run's: epochs 1 (asked 2)" in text
    tuned = json.loads((out / "tuned.json").read_text())
    assert tuned["chosen"] == {} and tuned["tried"]["mrpc"]["lora"] == {"0.0002": None, "0.0006": None, "0.002": None}


def test_a_second_preset_tuning_into_the_study_keeps_the_first_ones_rates(tmp_path, monkeypatch):
    script = tmp_path / "tune_train.py"
    script.write_text(TUNE_TRAIN)
    monkeypatch.setattr(sweep, "TRAIN", script)
    out = tmp_path / "study"
    flags = ["--grid", "cpu", "--out", str(out), "--tasks", "mrpc", "--stage", "tune", "--epochs", "1", "--quiet"]
    assert sweep.main(flags + ["--methods", "bitfit"]) == 0
    first = json.loads((out / "tuned.json").read_text())
    assert first["chosen"] == {"mrpc": {"bitfit": 1e-3}}
    assert sweep.main(flags + ["--methods", "lora"]) == 0  # as --grid families does beside --grid cpu
    both = json.loads((out / "tuned.json").read_text())
    assert both["chosen"] == {"mrpc": {"bitfit": 1e-3, "lora": 6e-4}}
    assert both["tried"]["mrpc"]["bitfit"] == first["tried"]["mrpc"]["bitfit"]
    (out / "tune" / "mrpc-lora-f1-s0-lr0.0006" / "results.json").unlink()  # a pair tuned again replaces its entry
    (tmp_path / "calls.txt").unlink()
    assert sweep.main(flags + ["--methods", "lora", "--dry-run"]) == 0
    assert json.loads((out / "tuned.json").read_text()) == both  # a dry run writes nothing
    assert tuning.keep_other_choices(out / "tuned.json", {"chosen": {}, "tried": {"mrpc": {"lora": {"6e-4": None}}},
                                                        "missing": ["x"]})["chosen"] == {"mrpc": {"bitfit": 1e-3}}


def test_rates_from_another_study_skip_the_tuning_stage(tmp_path, monkeypatch, capsys):
    script = tmp_path / "tune_train.py"
    script.write_text(TUNE_TRAIN)
    monkeypatch.setattr(sweep, "TRAIN", script)
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"chosen": {"mrpc": {"bitfit": 3e-3, "lora": 2e-4}}}))
    out = tmp_path / "longer"
    # a finished run under tune/ with the grid's epochs at bitfit's rate: --rates never copies it
    kept = presets.Run("mrpc", "bitfit", 1.0, 0, 12, lr=3e-3, tuning=True).directory(out)
    kept.mkdir(parents=True)
    (kept / "results.json").write_text(json.dumps({"status": "complete", "config": {"epochs": 12, "lr": 3e-3}}))
    flags = ["--grid", "cpu", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit,lora", "--fracs", "1",
             "--seeds", "0,1", "--budget-minutes", "0", "--epochs", "12", "--quiet", "--no-report"]
    assert sweep.main(flags + ["--rates", str(tuned), "--dry-run"]) == 0 and not (out / "rates.json").exists()
    assert sweep.main(flags + ["--rates", str(tuned)]) == 0
    lines = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(lines) == 4 and not (out / "tuned.json").exists()
    assert "copied_from" not in json.loads((out / "mrpc-bitfit-f1-s0" / "results.json").read_text())
    assert all(" --lr 0.003 " in x for x in lines if "bitfit" in x) and all(" --epochs 12 " in x for x in lines)
    assert all(" --lr 0.0002 " in x for x in lines if "lora" in x)
    # the source, relative to the study folder, so that it reads the same from anywhere
    assert json.loads((out / "rates.json").read_text()) == {"from": "../tuned.json",
                                                            "chosen": {"mrpc": {"bitfit": 3e-3, "lora": 2e-4}}}
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "tuned.json").write_text(tuned.read_text())
    for bad, says in [(["--rates", str(tuned), "--stage", "tune"], "no use with --stage tune"),
                      (["--rates", str(tmp_path / "none.json")], "none.json: no such file"),
                      ([], "took its rates with --rates; pass the same --rates again"),  # not a study that tunes
                      (["--out", str(tmp_path / "own"), "--rates", str(tuned)], "that study tunes its own rates")]:
        with pytest.raises(SystemExit):
            sweep.main(flags + bad)
        assert says in capsys.readouterr().err
    tuned.write_text(json.dumps({"chosen": {"mrpc": {"bitfit": 3e-3}}}))  # lora missing: refused, nothing runs
    other = flags[:3] + [str(tmp_path / "other")] + flags[4:] + ["--rates", str(tuned)]
    for dry in ([], ["--dry-run"]):
        assert sweep.main(other + dry) == 2
        assert "no tuned rate for mrpc/lora: its study did not tune them" in capsys.readouterr().err
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 4


def test_a_tuning_run_is_copied_into_the_grid_only_with_the_grids_epochs(tmp_path):
    p = presets.PRESETS["cpu"]
    source = presets.Run("mrpc", "lora", 1.0, 0, 6, lr=2e-4, tuning=True).directory(tmp_path)
    source.mkdir(parents=True)
    (source / "results.json").write_text(json.dumps({"status": "complete", "config": {"epochs": 6, "lr": 2e-4}}))
    rates = {"mrpc": {"lora": 2e-4}}
    assert not tuning.reuse_tuning_run(presets.Run("mrpc", "lora", 1.0, 0, 12, lr=2e-4), rates, p, tmp_path)
    assert not (tmp_path / "mrpc-lora-f1-s0").exists()
    assert tuning.reuse_tuning_run(presets.Run("mrpc", "lora", 1.0, 0, 6, lr=2e-4), rates, p, tmp_path)
    assert json.loads((tmp_path / "mrpc-lora-f1-s0" / "results.json").read_text())["copied_from"] == \
        "tune/mrpc-lora-f1-s0-lr0.0002"


def test_a_studys_new_cells_draw_dropout_masks_as_its_committed_runs_did(tmp_path):
    from study.runs import study_masks
    assert study_masks(tmp_path) is None  # no runs yet: train.py's default (fast on a CPU)
    for name, config in [("mrpc-full-f1-s0", {"task": "mrpc"}), ("tune/mrpc-full-f1-s0-lr1e-4",
                                                                   {"dropout_masks": "fast"})]:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "results.json").write_text(json.dumps({"status": "complete", "config": config}))
    assert study_masks(tmp_path) == "torch"  # a run from before the option drew torch's masks
    (tmp_path / "mrpc-full-f1-s0" / "results.json").write_text(
        json.dumps({"status": "complete", "config": {"dropout_masks": "fast"}}))
    assert study_masks(tmp_path) is None  # all drew auto's choice: auto decides again
    assert study_masks(Path(__file__).resolve().parents[1] / "results" / "cpu-minilm-tuned") == "torch"
