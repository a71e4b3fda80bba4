"""A tiny random causal LM with a byte-level BPE trained in-process (head_dim 32, as the vLLM
CPU attention backend needs)."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "El paciente presenta diabetes mellitus y fiebre alta. yes no Yes No",
    "Pacientul are durere toracică și febră. Is the candidate a DISEASE mention? yes",
    "Patient has chest pain and was treated with angioplasty. Answer yes or no. no",
    "Candidate SYMPTOM mention: \"fiebre\" (characters 3-9 of the note). Answer: yes",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_bpe_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(folder: Path, seed: int = 0, chat: bool = True, scale: float = 8.0) -> Path:
    """``scale`` multiplies the random weights: larger ones give answers that vary more
    between prompts, but saturate attention (a model that can barely learn)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_bpe_tokenizer(chat)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger random weights: answers that vary between prompts
        for p in model.parameters():
            p.mul_(scale)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
