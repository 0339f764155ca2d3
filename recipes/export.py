"""Export a preset for serving: a thin wrapper around `keras-gpt export`.

Writes a TensorFlow SavedModel with `logits` and `generate` signatures that
TensorFlow Serving loads (from a model trained on any backend), or the logits
graph as ONNX.

    python recipes/export.py runs/shakespeare_char/best served/shakespeare/1 --max-new-tokens 256
    python recipes/export.py runs/shakespeare_char/best shakespeare.onnx --format onnx
"""

import sys

from keras_gpt.cli import main

if __name__ == "__main__":
    main(["export", *sys.argv[1:]])
