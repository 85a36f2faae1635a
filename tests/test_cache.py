"""Issue 27, item 8: a corrupt or truncated tokenization cache entry (data.encode_split) is rebuilt with a
note, once, instead of failing every rerun until someone deletes it by hand."""
import warnings

import pytest

import data
import glue
from tokenizer import BertTokenizer


def test_a_corrupt_cache_entry_is_rebuilt_with_a_note(minilm_dir, glue_dir, tmp_path):
    tok = BertTokenizer.from_dir(minilm_dir)
    files = data.read_task_files(glue.get_task("cola"), glue_dir)
    cache = tmp_path / "cache"
    first = data.encode_split(files, "dev", tok, 32, cache)
    [entry] = cache.glob("*.npz")
    raw = entry.read_bytes()
    for broken in (raw[:len(raw) // 2], b"garbage", b""):
        entry.write_bytes(broken)
        with pytest.warns(UserWarning, match=f"{entry}: corrupt tokenization cache entry .*rebuilding it"):
            again = data.encode_split(files, "dev", tok, 32, cache)
        assert again.input_ids == first.input_ids and (again.labels == first.labels).all()
        assert entry.read_bytes() == raw  # rewritten: the next run reads it without a note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.encode_split(files, "dev", tok, 32, cache)
