"""Fine-tune a preset on instruction data or plain text: a thin wrapper around `keras-gpt finetune`.

    python recipes/finetune.py --preset runs/pretrain/best --data train.jsonl --lora-rank 8
    python recipes/finetune.py --preset runs/pretrain/best --data books/ --out runs/more
    python recipes/finetune.py --config my_finetune.toml --resume

`train.jsonl` holds one `{"prompt": ..., "response": ...}` (or
`{"messages": [...]}`) record per line; see keras_gpt.data.instructions. Any
other data (a text file, folder, glob, or JSONL of `{"text": ...}` documents)
is continued pretraining with the preset's tokenizer; `--format
instructions|text` overrides the guess.
"""

import sys

from keras_gpt.cli import main

if __name__ == "__main__":
    main(["finetune", *sys.argv[1:]])
