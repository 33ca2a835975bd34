"""The real all-MiniLM-L6-v2 checkpoint: lmforge equals transformers on a padded batch."""

from __future__ import annotations

import pytest
import torch

import lmforge

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "This is a great movie!",
    "The acting was terrible, and the plot made no sense at all.",
    "A quiet, patient film about grief.",
    "I laughed.",
    "Café au lait, naïve résumé, Ångström — accents everywhere.",
    "我爱自然语言处理。",
    "Emoji 🎬🍿 are not in the vocabulary 🤖",
    "Short",
    "Whether the director intended it or not, the second half drags on far longer than it should, "
    "with scene after scene of characters explaining what we already know.",
    "Tabs\tand\nnewlines and \u200b zero-width spaces.",
    "1999, 2001: a space odyssey?",
    "It's not not good.",
    "Mixed 中文 and English text.",
    "BERT was pretrained with masked language modelling and next sentence prediction.",
    "!!!",
    "The end.",
]


def test_minilm_last_hidden_state_matches_transformers(minilm_path):
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = hf_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert batch["attention_mask"].float().mean() < 0.8  # really padded
    hf_model = transformers.AutoModel.from_pretrained(minilm_path).eval()
    ours = lmforge.AutoModel.from_pretrained(minilm_path)
    with torch.no_grad():
        expected = hf_model(**batch).last_hidden_state
        got = ours(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_minilm_tokenizer_matches_transformers(minilm_path):
    theirs = transformers.AutoTokenizer.from_pretrained(minilm_path)(SENTENCES, SENTENCES[::-1], padding=True,
                                                                     truncation=True, max_length=48)
    mine = lmforge.AutoTokenizer.from_pretrained(minilm_path)(SENTENCES, SENTENCES[::-1], padding=True,
                                                              truncation=True, max_length=48)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert mine[key] == theirs[key], key


def test_seed_example_runs_on_minilm(minilm_path):
    model = lmforge.AutoModelForSequenceClassification.from_pretrained(minilm_path)
    tokenizer = lmforge.AutoTokenizer.from_pretrained(minilm_path)
    outputs = model(**tokenizer("This is a great movie!", return_tensors="pt"))
    assert outputs.logits.shape == (1, 2)
    assert outputs.logits.argmax(-1).item() in (0, 1)
