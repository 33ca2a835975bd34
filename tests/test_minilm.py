"""The real all-MiniLM-L6-v2 checkpoint: lmforge equals transformers on a padded batch (at real tokens by default,
everywhere with attn_implementation="sdpa")."""

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
    """attn_implementation="sdpa": transformers-identical at every position, padding included."""
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = hf_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert batch["attention_mask"].float().mean() < 0.8  # really padded
    hf_model = transformers.AutoModel.from_pretrained(minilm_path).eval()
    ours = lmforge.AutoModel.from_pretrained(minilm_path, attn_implementation="sdpa")
    with torch.no_grad():
        expected = hf_model(**batch).last_hidden_state
        got = ours(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "autograd"])
def test_minilm_default_matches_transformers_at_real_tokens(minilm_path, grad):
    """The seed program's path (default model, padded batch, with or without no_grad): equal at real tokens,
    zeros at padding."""
    batch = transformers.AutoTokenizer.from_pretrained(minilm_path)(SENTENCES, padding=True, return_tensors="pt")
    hf_model = transformers.AutoModel.from_pretrained(minilm_path).eval()
    ours = lmforge.AutoModel.from_pretrained(minilm_path)
    real = batch["attention_mask"].bool()
    with torch.set_grad_enabled(grad):
        expected = hf_model(**batch)
        got = ours(**batch)
    torch.testing.assert_close(got.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)
    assert got.last_hidden_state[~real].abs().max() == 0


def test_minilm_tokenizer_matches_transformers(minilm_path):
    theirs = transformers.AutoTokenizer.from_pretrained(minilm_path)(SENTENCES, SENTENCES[::-1], padding=True,
                                                                     truncation=True, max_length=48)
    mine = lmforge.AutoTokenizer.from_pretrained(minilm_path)(SENTENCES, SENTENCES[::-1], padding=True,
                                                              truncation=True, max_length=48)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert mine[key] == theirs[key], key


def seed_classifier_pair(minilm_path):
    """lmforge's and transformers' MiniLM classifiers; the new (random) head is copied from ours to theirs."""
    torch.manual_seed(0)  # the new head's init
    ours = lmforge.AutoModelForSequenceClassification.from_pretrained(minilm_path)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path).eval()
    theirs.classifier.load_state_dict(ours.classifier.state_dict())
    return ours, theirs


def test_seed_example_matches_transformers_on_minilm(minilm_path):
    """The seed program verbatim (one text, no no_grad) gives transformers' logits for the same weights."""
    model, theirs = seed_classifier_pair(minilm_path)
    tokenizer = lmforge.AutoTokenizer.from_pretrained(minilm_path)
    outputs = model(**tokenizer("This is a great movie!", return_tensors="pt"))
    expected = theirs(**transformers.AutoTokenizer.from_pretrained(minilm_path)("This is a great movie!",
                                                                            return_tensors="pt"))
    assert outputs.logits.shape == (1, 2)
    torch.testing.assert_close(outputs.logits, expected.logits, atol=1e-5, rtol=0)
    assert outputs.logits.argmax(-1).item() == expected.logits.argmax(-1).item()


def test_seed_program_on_a_padded_batch_matches_transformers(minilm_path):
    model, theirs = seed_classifier_pair(minilm_path)
    tokenizer = lmforge.AutoTokenizer.from_pretrained(minilm_path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    logits = model(**batch).logits  # (16, 2)
    expected = theirs(**batch).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_sentence_embedding_pipeline_matches_transformers_mean_pooling(minilm_path):
    """The sentence-transformers recipe of this folder (mean over real tokens, then L2 normalisation, read from
    modules.json / 1_Pooling) written out on transformers' model: equal to the pipeline's vectors."""
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = hf_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = transformers.AutoModel.from_pretrained(minilm_path).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    embed = lmforge.pipeline("sentence-embedding", model=str(minilm_path), batch_size=5)
    assert (embed.pooling, embed.normalize) == ("mean", True)
    torch.testing.assert_close(torch.tensor(embed(SENTENCES)), expected, atol=1e-5, rtol=0)
