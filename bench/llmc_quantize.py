"""Run inside llm-compressor's own venv (bench/quantized_checkpoint.py makes it): an HF folder -> a compressed-tensors checkpoint.

    <venv>/bin/python bench/llmc_quantize.py <float HF folder> <out folder> rtn|gptq [calibration.json]

rtn: llm-compressor's QuantizationModifier, W4A16 in groups of 32 (its preset's 128 does not
divide SmolLM2's 576 columns), symmetric, min-max scales: no data. gptq: its GPTQModifier, the
same scheme, calibrated on the token sequences of calibration.json. lm_head stays float either
way; saved compressed (pack-quantized).
"""
import json
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

source, out, method = sys.argv[1:4]
W4A16_G32 = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                            "strategy": "group", "group_size": 32}}}
model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
tokenizer = AutoTokenizer.from_pretrained(source)
if method == "gptq":
    from datasets import Dataset

    samples = json.load(open(sys.argv[4]))
    dataset = Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})
    oneshot(model=model, dataset=dataset, recipe=GPTQModifier(config_groups=W4A16_G32, ignore=["lm_head"]),
            max_seq_length=max(len(s) for s in samples), num_calibration_samples=len(samples))
else:
    oneshot(model=model, recipe=QuantizationModifier(config_groups=W4A16_G32, ignore=["lm_head"]))
model.save_pretrained(out, save_compressed=True)
tokenizer.save_pretrained(out)
print(json.dumps({"out": out, "method": method}))
