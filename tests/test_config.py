"""config.py: every field of TrainConfig and MethodConfig is a flag with its help; bad values are clear
errors before anything loads; per-method learning rates."""
import argparse
import inspect
import re
from dataclasses import dataclass, fields

import pytest

import adapters
import config
import flags
from adapters import method_flag
from config import TrainConfig, parse_args
from optim import default_lr


@pytest.mark.parametrize("argv, message", [
    (["--frac", "0"], "--frac must be in (0, 1]"),
    (["--frac", "1.2"], "--frac must be in (0, 1]"),
    (["--time-budget", "-1"], "--time-budget must be finite minutes >= 0"),
    (["--task", "sst9"], "invalid choice: 'sst9' (choose from 'cola', 'mrpc', 'stsb')"),
    (["--method", "prefix-magic"], "invalid choice: 'prefix-magic'"),
    (["--amp", "fp8"], "invalid choice: 'fp8'"),
    (["--adapter-placement", "middle"], "invalid choice: 'middle'"),
])
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_defaults_per_method():
    assert parse_args(["--method", "full"]).lr == 2e-5
    assert parse_args(["--method", "bitfit"]).lr == 1e-3
    assert parse_args(["--method", "lora", "--lr", "3e-4"]).lr == 3e-4
    assert parse_args([]).epochs >= 15  # the paper's protocol


def test_hybrid_flags_and_learning_rate(capsys):
    cfg = parse_args(["--method", "lora+bitfit"])
    assert (cfg.method, cfg.lr, cfg.out) == ("bitfit+lora", 5e-4, "runs/mrpc-bitfit+lora-f1-s0")
    assert default_lr("adapter+bitfit") == 5e-4 and default_lr("ia3") == 3e-3 and default_lr("prompt+ia3") == 3e-3
    cfg = parse_args(["--method", "prefix", "--prefix-length", "7", "--prefix-hidden", "64", "--prompt-length", "3"])
    assert (cfg.options.prefix_length, cfg.options.prefix_hidden, cfg.options.prompt_length) == (7, 64, 3)
    with pytest.raises(argparse.ArgumentTypeError, match="invalid choice: 'lora\\+full'"):
        method_flag("lora+full")
    with pytest.raises(SystemExit):
        parse_args(["--method", "bitfit+nope"])
    assert "unknown part 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--method", "prompt", "--prompt-length", "0"])
    assert "--prompt-length must be in 1..504, got 0" in capsys.readouterr().err


def test_every_field_is_a_flag_with_its_help_in_its_group(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls in (TrainConfig, adapters.MethodConfig):
        for f in fields(cls):
            if f.name != "options":
                assert f"--{f.name.replace('_', '-')}" in text and " ".join(f.metadata["help"].split()) in text
                assert f.metadata["group"] in flags.GROUPS, f.name
    groups = [text.index(g + ":") for g in flags.GROUPS]
    assert groups == sorted(groups) and text.index("--method") < groups[1]  # what to train, first
    assert "(default: )" not in text


def test_help_shows_the_rate_the_run_will_use(capsys):
    for argv, rate in [(["--method", "bitfit"], "0.001 for --method bitfit"),
                       (["--model", "minilm"], "0.0001 for --method full --model minilm"),
                       ([], "2e-05 for --method full")]:
        with pytest.raises(SystemExit):
            parse_args([*argv, "--help"])
        assert rate in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("flag, suggested", [("--learning_rate", "--lr"), ("--epcohs", "--epochs"),
                                             ("--lora_r", "--lora-r"), ("--batchsize", "--batch-size")])
def test_a_misspelt_flag_gets_a_suggestion_and_a_short_usage(flag, suggested, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args([flag, "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"did you mean {suggested}?" in err.splitlines()[-1]
    assert len(err.splitlines()) <= 3 and max(map(len, err.splitlines())) <= 100


def test_help_lines_fit_100_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 100


def test_method_options_reach_the_method_config():
    cfg = parse_args(["--method", "adapter", "--adapter-act", "relu", "--adapter-init-std", "0.01",
                      "--lora-targets", "query,key", "--lora-alpha", "8.5", "--compile"])
    assert cfg.options == adapters.MethodConfig("adapter", adapter_act="relu", adapter_init_std=0.01,
                                                lora_targets=("query", "key"), lora_alpha=8.5)
    assert cfg.compile and not parse_args(["--no-compile"]).compile
    record = cfg.record()  # results.json's flat "config": the run's fields and the method's side by side
    assert record["lora_targets"] == "query,key" and record["adapter_act"] == "relu" and record["epochs"] == 15
    assert set(record) == {f.name for f in fields(TrainConfig) if f.name != "options"} | \
        {f.name for f in fields(adapters.MethodConfig)}


def test_a_new_field_becomes_a_flag_and_needs_its_declaration():
    @dataclass
    class Options:
        train_pooler: bool = flags.option(False, "train BERT's pooler too", flags.METHOD)
        width: int = flags.option(3, "how wide", flags.HOW)

    p = argparse.ArgumentParser()
    flags.add_flags({g: p.add_argument_group(g) for g in flags.GROUPS}, Options)
    assert vars(p.parse_args(["--train-pooler", "--width", "5"])) == {"train_pooler": True, "width": 5}
    assert "train BERT's pooler too" in p.format_help() and "how wide (default: 3)" in p.format_help()

    @dataclass
    class Silent:
        width: int = 3  # a comment is not a declaration

    with pytest.raises(TypeError, match="Silent.width must be declared with flags.option"):
        flags.add_flags({}, Silent)


def test_train_pooler_flag():
    assert parse_args(["--method", "lora", "--train-pooler"]).options.train_pooler is True
    assert parse_args(["--method", "lora"]).options.train_pooler is False


def test_default_rates_by_model():
    assert default_lr("full") == 2e-5 and default_lr("full", "minilm") == 1e-4  # one rate cannot serve both
    assert default_lr("bitfit", "minilm") == default_lr("bitfit") == 1e-3
    assert parse_args(["--model", "minilm", "--method", "full"]).lr == 1e-4
    assert parse_args(["--model", "minilm", "--method", "full", "--lr", "3e-5"]).lr == 3e-5  # a given rate wins
    assert parse_args(["--method", "full"]).lr == 2e-5  # BERT-base, the paper's model
