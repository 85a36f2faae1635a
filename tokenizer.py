"""BERT WordPiece tokenization with the `tokenizers` library.

From a checkpoint's tokenizer.json when it has one, else from vocab.txt built as BERT's own
pipeline: BertNormalizer (clean text, CJK spacing, lowercase/strip accents for uncased models),
BertPreTokenizer (whitespace and punctuation), WordPiece, then [CLS] A [SEP] (B [SEP]) with
token_type_ids 0 for A and 1 for B. Pairs are truncated longest-first, as BERT does.
"""
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors


class BertTokenizer:
    def __init__(self, tokenizer: Tokenizer, source: str):
        self.tok = tokenizer
        self.tok.no_padding()  # data.py pads each batch to its own longest sequence
        self.source = source
        self.pad_token_id = self.tok.token_to_id("[PAD]")
        self.cls_token_id = self.tok.token_to_id("[CLS]")
        self.sep_token_id = self.tok.token_to_id("[SEP]")
        if None in (self.pad_token_id, self.cls_token_id, self.sep_token_id):
            raise ValueError(f"{source}: vocabulary lacks [PAD], [CLS] or [SEP]")

    @classmethod
    def from_dir(cls, model_dir):
        """tokenizer.json if the directory has one, else vocab.txt (and tokenizer_config.json's do_lower_case);
        a file that cannot be read as one is a ValueError naming it."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if path.is_file():
            try:
                return cls(Tokenizer.from_file(str(path)), str(path))
            except Exception as e:  # the Rust library raises a bare Exception for a truncated or foreign file
                raise ValueError(f"{path}: not a readable tokenizer file ({str(e).splitlines()[0][:200]})") from None
        if (model_dir / "vocab.txt").is_file():
            config_path = model_dir / "tokenizer_config.json"
            try:
                config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{config_path}: not valid JSON ({e})") from None
            lowercase = config.get("do_lower_case", True) if isinstance(config, dict) else None
            if not isinstance(lowercase, bool):
                raise ValueError(f"{config_path}: expected an object whose do_lower_case is true or false")
            return cls.from_vocab(model_dir / "vocab.txt", lowercase=lowercase)
        raise FileNotFoundError(f"{model_dir}: neither tokenizer.json nor vocab.txt")

    @classmethod
    def from_vocab(cls, vocab_path, lowercase=True):
        try:
            tok = Tokenizer(models.WordPiece.from_file(str(vocab_path), unk_token="[UNK]"))
        except Exception as e:  # the Rust library's bare Exception: unreadable, not UTF-8
            raise ValueError(f"{vocab_path}: not a readable vocabulary ({e})") from None
        if tok.get_vocab_size() == 0:
            raise ValueError(f"{vocab_path}: no tokens (an empty vocabulary)")
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if None in (cls_id, sep_id):
            raise ValueError(f"{vocab_path}: vocabulary lacks [CLS] or [SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        tok.decoder = decoders.WordPiece()
        return cls(tok, str(vocab_path))

    def __call__(self, texts_a, texts_b=None, max_length=128):
        """Lists of strings -> {"input_ids": [[int]], "token_type_ids": [[int]]}, unpadded."""
        self.tok.enable_truncation(max_length, strategy="longest_first")
        inputs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b))
        encodings = self.tok.encode_batch(inputs)
        return {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings]}

    def decode(self, ids):
        return self.tok.decode(ids)
