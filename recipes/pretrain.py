"""Pretrain a GPT: a thin wrapper around `keras-gpt pretrain`.

With no arguments this is the README's demo: a 4-layer byte-level GPT trained
for about three minutes on Python's own standard-library source (no download),
on whichever backend KERAS_BACKEND names, ending with a sample.

    python recipes/pretrain.py                                   # the demo
    python recipes/pretrain.py --config recipes/configs/shakespeare_char.toml
    python recipes/pretrain.py --data my_corpus.txt --out runs/mine --max-steps 500
    python recipes/pretrain.py --config ... --resume             # continue a killed run
"""

import sys

from keras_gpt.cli import main

if __name__ == "__main__":
    main(["pretrain", *sys.argv[1:]])
