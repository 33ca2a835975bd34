"""ELECTRA parity with `transformers`: same weights -> same outputs and losses (fp32, 1e-5), both load directions,
with embeddings narrower than the hidden size (`embeddings_project`) and as wide."""

from __future__ import annotations

import pytest
import torch

from lmforge import AutoModelForPreTraining, AutoModelForSequenceClassification
from lmforge.models.electra import ElectraConfig
from lmforge.models.electra import model as ours

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
HEADS = ["ElectraModel", "ElectraForPreTraining", "ElectraForMaskedLM", "ElectraForSequenceClassification",
         "ElectraForTokenClassification"]
CONFIGS = {
    "projected": dict(embedding_size=16, hidden_size=32, num_attention_heads=4, hidden_act="gelu"),
    "same-width": dict(embedding_size=24, hidden_size=24, num_attention_heads=3, hidden_act="relu", type_vocab_size=1),
}
PER_TOKEN_LOGITS = {"ElectraForPreTraining", "ElectraForMaskedLM", "ElectraForTokenClassification"}


def config_fields(name: str) -> dict:
    return dict(vocab_size=99, num_hidden_layers=2, intermediate_size=37, max_position_embeddings=64,
                hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=3, **CONFIGS[name])


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Weights moved away from their init: zero biases and unit LayerNorms hide bugs."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def batch_and_labels(head: str, config) -> tuple[dict, dict]:
    """Right-padded sentence pairs of lengths 12, 9, 5, 2, and labels for `head`."""
    g = torch.Generator().manual_seed(0)
    B, T = 4, 12
    input_ids = torch.randint(5, config.vocab_size, (B, T), generator=g)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    for b, length in enumerate([T, T - 3, 5, 2]):
        attention_mask[b, :length] = 1
        if config.type_vocab_size > 1:
            token_type_ids[b, length // 2:length] = 1
    batch = dict(input_ids=input_ids.masked_fill(attention_mask == 0, 0), attention_mask=attention_mask,
                 token_type_ids=token_type_ids)
    pad = attention_mask == 0
    if head == "ElectraForPreTraining":  # 0/1 "replaced"; padding positions are skipped by the loss itself
        return batch, {"labels": torch.randint(0, 2, (B, T), generator=g)}
    if head == "ElectraForMaskedLM":
        labels = torch.randint(0, config.vocab_size, (B, T), generator=g)
        return batch, {"labels": labels.masked_fill(torch.rand(B, T, generator=g) > 0.3, -100).masked_fill(pad, -100)}
    if head == "ElectraForSequenceClassification":
        return batch, {"labels": torch.randint(0, 3, (B,), generator=g)}
    if head == "ElectraForTokenClassification":
        return batch, {"labels": torch.randint(0, 3, (B, T), generator=g).masked_fill(pad, -100)}
    return batch, {}


def compare(head: str, mine, theirs, attention_mask: torch.Tensor, real_tokens_only: bool) -> None:
    """Every output field both have; per-token ones at real tokens only when `real_tokens_only` (lmforge's
    unpadded path holds zeros at padding)."""
    real = attention_mask.bool()
    names = ["last_hidden_state", "hidden_states"] if head == "ElectraModel" else ["loss", "logits", "hidden_states"]
    if not real_tokens_only:
        names.append("attentions")
    for name in names:
        a, b = getattr(mine, name), getattr(theirs, name)
        pairs = list(zip(a, b)) if isinstance(b, tuple) else [(a, b)]
        assert not isinstance(b, tuple) or len(a) == len(b), name
        per_token = name in ("last_hidden_state", "hidden_states") or (name == "logits" and head in PER_TOKEN_LOGITS)
        for i, (x, y) in enumerate(pairs):
            if real_tokens_only and per_token:
                x, y = x[real], y[real]
            torch.testing.assert_close(x, y, atol=ATOL, rtol=0, msg=f"{head}.{name}[{i}]")


def run_both(head, hf_model, our_model, real_tokens_only: bool):
    batch, labels = batch_and_labels(head, hf_model.config)
    kwargs = dict(output_hidden_states=True, output_attentions=not real_tokens_only)
    with torch.no_grad():
        theirs = hf_model(**batch, **labels, **kwargs)
        mine = our_model(**batch, **labels, **kwargs)
    compare(head, mine, theirs, batch["attention_mask"], real_tokens_only)
    return mine


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_transformers_checkpoint_loads_with_equal_outputs(tmp_path, head, config_name):
    """output_attentions=True runs lmforge padded: every position, attentions and losses equal."""
    torch.manual_seed(0)
    config = transformers.ElectraConfig(**config_fields(config_name), attn_implementation="eager")
    hf_model = perturbed(getattr(transformers, head)(config))
    hf_model.save_pretrained(tmp_path)
    our_model, info = getattr(ours, head).from_pretrained(tmp_path, output_loading_info=True)
    assert not info.missing_keys and not info.unexpected_keys and not info.mismatched_keys, info
    run_both(head, hf_model, our_model, real_tokens_only=False)


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_default_unpadded_path_matches_at_real_tokens(tmp_path, head, config_name):
    torch.manual_seed(0)
    config = transformers.ElectraConfig(**config_fields(config_name), attn_implementation="sdpa")
    hf_model = perturbed(getattr(transformers, head)(config))
    hf_model.save_pretrained(tmp_path)
    our_model = getattr(ours, head).from_pretrained(tmp_path)
    mine = run_both(head, hf_model, our_model, real_tokens_only=True)
    pad = batch_and_labels(head, config)[0]["attention_mask"] == 0
    assert mine.hidden_states[-1][pad].abs().max() == 0  # really unpadded


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_lmforge_save_loads_in_transformers(tmp_path, head, config_name):
    torch.manual_seed(0)
    our_model = perturbed(getattr(ours, head)(ElectraConfig(**config_fields(config_name))))
    our_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    hf_model, info = getattr(transformers, head).from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    run_both(head, hf_model.eval(), our_model, real_tokens_only=False)


def test_discriminator_loss_without_attention_mask_reads_every_token(tmp_path):
    torch.manual_seed(0)
    config = transformers.ElectraConfig(**config_fields("projected"), attn_implementation="eager")
    hf_model = perturbed(transformers.ElectraForPreTraining(config))
    hf_model.save_pretrained(tmp_path)
    our_model = ours.ElectraForPreTraining.from_pretrained(tmp_path)
    ids = torch.randint(5, 99, (2, 7), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([[0, 1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0, 1]])
    with torch.no_grad():
        torch.testing.assert_close(our_model(ids, labels=labels).loss, hf_model(ids, labels=labels).loss,
                                   atol=ATOL, rtol=0)


def test_auto_classes_pick_electra(tmp_path):
    ours.ElectraForPreTraining(ElectraConfig(**config_fields("projected"))).save_pretrained(tmp_path)
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)).__name__ == "ElectraForPreTraining"
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert type(model).__name__ == "ElectraForSequenceClassification" and model.classifier.out_proj.out_features == 2
