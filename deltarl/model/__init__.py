"""model: Kimi Linear (KDA + MLA hybrid) as a transformers model, its decode cache and tokenizers.

Importing this package registers `kimi_linear` with AutoConfig and AutoModelForCausalLM (replacing
transformers' own port, whose parameter layout differs from the released checkpoints and vLLM).
"""
from transformers import AutoConfig, AutoModelForCausalLM

from .cache import KimiLinearCache, cache_bytes_per_sequence
from .config import KimiLinearConfig
from .modeling import KimiLinearForCausalLM, KimiLinearModel
from .tiny import tiny_config
from .tokenizer import BUILTIN_CHAR, char_tokenizer, load_tokenizer

AutoConfig.register("kimi_linear", KimiLinearConfig, exist_ok=True)
AutoModelForCausalLM.register(KimiLinearConfig, KimiLinearForCausalLM, exist_ok=True)

__all__ = ["KimiLinearConfig", "KimiLinearForCausalLM", "KimiLinearModel", "KimiLinearCache",
           "cache_bytes_per_sequence", "tiny_config", "BUILTIN_CHAR", "char_tokenizer", "load_tokenizer"]
