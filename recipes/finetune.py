"""Fine-tune a preset on instruction data: a thin wrapper around `keras-gpt finetune`.

    python recipes/finetune.py --preset runs/pretrain/best --data train.jsonl --lora-rank 8
    python recipes/finetune.py --config my_finetune.toml --resume

`train.jsonl` holds one `{"prompt": ..., "response": ...}` (or
`{"messages": [...]}`) record per line; see keras_gpt.data.instructions.
"""

import sys

from keras_gpt.cli import main

if __name__ == "__main__":
    main(["finetune", *sys.argv[1:]])
