"""Peer models the benchmark scripts time beside keras_gpt."""


def hugging_face_gpt2(shape: dict):
    """A randomly initialised Hugging Face `GPT2LMHeadModel` of a keras_gpt shape, dropout 0.

    Args:
        shape: `GPT` arguments: `vocabulary_size`, `num_layers`, `num_heads`,
            `hidden_dim`, `max_sequence_length`.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=shape["vocabulary_size"],
        n_positions=shape["max_sequence_length"],
        n_embd=shape["hidden_dim"],
        n_layer=shape["num_layers"],
        n_head=shape["num_heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)
