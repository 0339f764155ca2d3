"""The preset formats keras_gpt reads and writes: its own, Hugging Face GPT-2, KerasHub GPT-2."""
