"""make demo's check: 8 samples after 'def ' from its best model (its sampling: top-k 20,
temperature 0.8, the 124 tokens the context leaves); how many parse as Python up to their
last complete line. Prints JSON.

    KERAS_BACKEND=tensorflow python benchmarks/demo_samples.py runs/demo/best
"""

import ast
import json
import sys

import numpy as np

import keras_gpt
from keras_gpt.presets import load_tokenizer

preset = sys.argv[1]
model = keras_gpt.GPT.from_preset(preset)
tokenizer = load_tokenizer(preset)
prompt = tokenizer.encode("def ")
ids = model.generate(
    np.array([prompt] * 8), max_new_tokens=124, sampler="top_k", top_k=20, temperature=0.8, seed=0
)
results = []
for row in ids:
    text = tokenizer.decode(row.tolist())
    complete = text[: text.rfind("\n")] if "\n" in text else text
    try:
        ast.parse(complete)
        ok = True
    except SyntaxError:
        ok = False
    results.append({"parses": ok, "text": text})
print(
    json.dumps({"parsed": sum(r["parses"] for r in results), "of": 8, "samples": results}, indent=1)
)
