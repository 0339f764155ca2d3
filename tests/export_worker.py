"""The serving side of tests/test_export.py: plain TensorFlow, never imports keras_gpt.

Usage: python tests/export_worker.py SAVED_MODEL REQUESTS_JSON OUT_NPZ

REQUESTS_JSON maps a request name to `{"signature": ..., "inputs": {...}}`.
Each request is converted to the dtypes the signature declares, run through
`tf.saved_model.load(SAVED_MODEL).signatures[signature]`, and its outputs are
saved as `NAME/OUTPUT` in OUT_NPZ; a request the graph rejects is saved as
`NAME/error` (the message).
"""

import json
import sys

import numpy as np
import tensorflow as tf


def main(path: str, requests_file: str, out_file: str) -> None:
    served = tf.saved_model.load(path)
    with open(requests_file) as f:
        requests = json.load(f)
    results = {"signatures": np.array(sorted(served.signatures))}
    for name, request in requests.items():
        fn = served.signatures[request["signature"]]
        specs = fn.structured_input_signature[1]
        inputs = {
            key: tf.constant(np.asarray(value, specs[key].dtype.as_numpy_dtype))
            for key, value in request["inputs"].items()
        }
        try:
            outputs = fn(**inputs)
        except tf.errors.InvalidArgumentError as error:
            results[f"{name}/error"] = np.array(error.message)
            continue
        for key, value in outputs.items():
            results[f"{name}/{key}"] = value.numpy()
    # The point of the test: serving needs TensorFlow only.
    assert "keras_gpt" not in sys.modules, "the SavedModel pulled in keras_gpt"
    np.savez(out_file, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
