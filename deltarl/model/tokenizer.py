"""Tokenizers: any transformers tokenizer from a local folder, or the built-in character tokenizer.

The built-in one needs no download: one token per printable ASCII character plus newline, and four
special tokens. It is saved in the transformers format (tokenizer.json), so vLLM loads the same folder.
"""
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARACTERS = "\n" + "".join(c for c in string.printable if c.isprintable())
BUILTIN_CHAR = "builtin:char"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: ids 0-3 are <pad> <bos> <eos> <unk>, then one id per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>", clean_up_tokenization_spaces=False)


def load_tokenizer(name_or_path: str):
    """`builtin:char`, or a local folder holding a transformers tokenizer (never a hub download)."""
    if name_or_path == BUILTIN_CHAR:
        return char_tokenizer()
    if not Path(name_or_path).is_dir():
        raise ValueError(f"tokenizer {name_or_path!r}: not {BUILTIN_CHAR!r} and not a local folder "
                         "(deltarl never downloads from a hub)")
    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
