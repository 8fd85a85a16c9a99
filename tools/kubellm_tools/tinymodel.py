"""A tiny random-weight causal LM with a freshly trained tokenizer, for tests and offline development.

No hub access is needed: the BPE tokenizer is trained on a built-in text with `tokenizers`, the model is a
small Llama built from a config, and both are written with ``save_pretrained`` so that the server loads them
through exactly the same code path as a real model folder. ``kubellm tiny-model DIR`` builds one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Enough varied text for a few hundred BPE merges; the words carry no meaning for the random model.
_TRAINING_TEXT = """\
Kubernetes runs containers in pods. A deployment keeps a number of pods running and replaces them when they fail.
A service gives the pods one stable address. The operator watches custom resources and converges the cluster to
the desired state. An inference server loads a language model, accepts questions over HTTP and streams answers.
Readiness means the model is loaded and can generate now; liveness means the process and its loop are alive.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick daft
zebras jump! Sphinx of black quartz, judge my vow. 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14 42.
Hello, world. What is the capital of France? Paris is the capital of France. Tell me a joke about computers.
Why did the programmer quit his job? Because he did not get arrays. Write a short poem about the sea and the sky.
"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as SmolLM2 uses; kept short so prompts of the tiny model stay small.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_model(
    folder: Path,
    *,
    vocab_size: int = 384,
    hidden_size: int = 48,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny random Llama model and its tokenizer into ``folder`` (created if missing); returns it."""
    # Heavy imports stay inside: `kubellm --help` must not pay for torch.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    # Byte-level: every string round-trips, so arbitrary user text never hits an unknown token.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_TRAINING_TEXT] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than the default 0.02, so that greedy output varies with the prompt instead of repeating a token.
        initializer_range=0.5,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str]) -> int:
    """``kubellm tiny-model DIR``: build the tiny random model into DIR."""
    parser = argparse.ArgumentParser(prog="kubellm tiny-model", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the model (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    args = parser.parse_args(argv)
    folder = build_tiny_model(args.folder, seed=args.seed)
    print(f"tiny model written to {folder}; serve it with KUBELLM_MODEL={folder} kubellm serve")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
