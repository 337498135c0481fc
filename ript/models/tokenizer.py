"""Prompt tokenizers: the checkpoint's own (local files only), or one built offline.

Models trained from scratch (the `tiny` and `small` presets) get a word-level tokenizer
over every LIBERO instruction, built here without any download and saved with the
checkpoint; real pi0 checkpoints bring PaliGemma's tokenizer in their directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ript.checkpoint import TOKENIZER_FILES, has_tokenizer

if TYPE_CHECKING:  # transformers is imported where used (its import takes seconds)
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, PaliGemma's order


def libero_instructions() -> list[str]:
    """The language instruction of every task in the five standard LIBERO suites."""
    from ript.envs.libero_env import task_info
    from ript.envs.suites import SUITE_NUM_TASKS

    return sorted(
        {task_info(suite, t).language for suite, n in SUITE_NUM_TASKS.items() for t in range(n)}
    )


def build_word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Lower-cased whitespace words of `texts`, with a leading <bos> like PaliGemma's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    path = Path(path)
    if not has_tokenizer(path):
        raise FileNotFoundError(
            f"{path}: no tokenizer (expected one of {', '.join(TOKENIZER_FILES)}); models "
            "trained here save theirs; copy PaliGemma's into a pi0 checkpoint or set tokenizer_path"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)
