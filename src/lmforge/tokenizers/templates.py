"""Per-family tokenizer templates: special tokens, the `[CLS] A [SEP] B [SEP]`-style post-processor, the
normaliser, and the model input names a family's models take (BERT: token_type_ids; the byte-level BPE
decoders, GPT-2 / Llama: none)."""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import normalizers, processors

# Same order as transformers' SPECIAL_TOKENS_ATTRIBUTES, so `all_special_tokens` lists them identically.
SPECIAL_TOKEN_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

BERT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}

# Ids 0..4 of every tokenizer lmforge trains.
TRAINED_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Ids 0..1 of a GPT-2-style tokenizer lmforge trains (causal LMs): end of text (BOS, EOS, UNK), then padding.
GPT2_STYLE_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")
# Ids 0..4 of a Unigram tokenizer lmforge trains (encoder-decoders): T5's pad / eos / unk first, then BART's
# <s> and <mask>.
SEQ2SEQ_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "<s>", "<mask>")


def bert_template(cls_token: str, sep_token: str, cls_id: int, sep_id: int) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
    )


def bert_normalizer(
    lowercase: bool, strip_accents: bool | None, tokenize_chinese_chars: bool, clean_text: bool = True
) -> normalizers.BertNormalizer:
    # strip_accents=None means "follow lowercase", as in original BERT (BertNormalizer does the same).
    return normalizers.BertNormalizer(
        clean_text=clean_text,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )


@dataclass(frozen=True)
class Template:
    """What a family's tokenizer folder implies when tokenizer_config.json does not say it."""

    model_input_names: tuple[str, ...]


# BERT and ELECTRA: segment ids (token_type_ids). Decoders (GPT-2 / Llama / Qwen2, byte-level BPE): no segments; their
# special tokens and post-processor come with tokenizer.json (or the GGUF metadata), not from here.
TEMPLATES = {
    "bert": Template(model_input_names=("input_ids", "token_type_ids", "attention_mask")),
    "electra": Template(model_input_names=("input_ids", "token_type_ids", "attention_mask")),
    "gpt2": Template(model_input_names=("input_ids", "attention_mask")),
    "llama": Template(model_input_names=("input_ids", "attention_mask")),
    "qwen2": Template(model_input_names=("input_ids", "attention_mask")),
    # Encoder-decoders: the source's ids and mask (decoder inputs come from labels or generation).
    "bart": Template(model_input_names=("input_ids", "attention_mask")),
    "marian": Template(model_input_names=("input_ids", "attention_mask")),
    "t5": Template(model_input_names=("input_ids", "attention_mask")),
}
