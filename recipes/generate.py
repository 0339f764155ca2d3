"""Generate text from a preset: a thin wrapper around `keras-gpt generate`.

Tokens are printed as they are produced.

    python recipes/generate.py --preset runs/shakespeare_char/best --prompt "ROMEO:"
    python recipes/generate.py --preset runs/shakespeare_char/best --prompt "ROMEO:" \
        --temperature 0.8 --top-k 20 --seed 1 --num-samples 3
    python recipes/generate.py --preset runs/shakespeare_char/best --temperature 0   # greedy
    python recipes/generate.py --preset runs/shakespeare_char/best --interactive     # prompt loop
"""

import sys

from keras_gpt.cli import main

if __name__ == "__main__":
    main(["generate", *sys.argv[1:]])
