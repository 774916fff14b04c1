"""What the MiniLM accuracy benchmarks share: the sample sentences, and the
sentence embedding (mean of the token states under the attention mask) compared by cosine."""

from __future__ import annotations

import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization makes checkpoints smaller.",
    "A memory-mapped file is read one page at a time.",
    "Paris is the capital of France.",
    "The cat sat quietly on the warm windowsill.",
    "Interest rates rose again this quarter.",
    "She plays the violin in a string quartet.",
    "Glaciers carve deep valleys over thousands of years.",
]


def mean_pooled(model, tokenizer, sentences: list[str] = SENTENCES) -> torch.Tensor:
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)
