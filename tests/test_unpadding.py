"""attn_implementation="unpadded" (the default): equal outputs at real tokens, and equal gradients, for every head,
against the padded "sdpa" path."""

from __future__ import annotations

import pytest
import torch

from lmforge import BertConfig
from lmforge.models.bert import model as bert

HEADS = ["BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForNextSentencePrediction",
         "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
         "BertForMultipleChoice"]


def config() -> BertConfig:
    return BertConfig(vocab_size=60, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                      intermediate_size=40, max_position_embeddings=16, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, num_labels=3)


def mixed_batch(T: int = 16) -> dict[str, torch.Tensor]:
    """One-token, maximum-length and in-between sequence pairs, right-padded."""
    g = torch.Generator().manual_seed(0)
    lengths = [1, T, 5, T - 1]
    input_ids = torch.randint(5, 60, (4, T), generator=g)
    attention_mask = torch.zeros(4, T, dtype=torch.long)
    token_type_ids = torch.zeros(4, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        attention_mask[b, :n] = 1
        token_type_ids[b, n // 2:n] = 1
    return dict(input_ids=input_ids.masked_fill(attention_mask == 0, 0), attention_mask=attention_mask,
                token_type_ids=token_type_ids)


def labels_for(head: str, batch) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    B, T = batch["attention_mask"].shape
    real = batch["attention_mask"] == 1
    if head in ("BertForMaskedLM", "BertForPreTraining"):
        labels = torch.randint(0, 60, (B, T), generator=g).masked_fill(~real, -100)
        extra = {"next_sentence_label": torch.tensor([0, 1, 1, 0])} if head == "BertForPreTraining" else {}
        return {"labels": labels, **extra}
    if head == "BertForTokenClassification":
        return {"labels": torch.randint(0, 3, (B, T), generator=g).masked_fill(~real, -100)}
    if head == "BertForQuestionAnswering":
        return {"start_positions": torch.tensor([0, 3, 2, 1]), "end_positions": torch.tensor([0, 9, 4, 7])}
    if head == "BertForMultipleChoice":
        return {"labels": torch.tensor([1, 0])}
    if head in ("BertForSequenceClassification", "BertForNextSentencePrediction"):
        return {"labels": torch.tensor([0, 1, 1, 0])}
    return {}


def prepare(head: str):
    torch.manual_seed(0)
    cfg = config().replace(num_labels=2) if head == "BertForQuestionAnswering" else config()
    padded = getattr(bert, head)(cfg).train()  # dropout is 0: train mode, deterministic
    padded.set_attn_implementation("sdpa")
    unpadded = getattr(bert, head)(cfg).train()  # the default path, as constructed
    unpadded.load_state_dict(padded.state_dict())
    expected = "sdpa" if head == "BertForQuestionAnswering" else "unpadded"  # QA opts out (softmax over padding)
    assert {m.attn_implementation for m in unpadded.modules() if hasattr(m, "attn_implementation")} == {expected}
    assert {m.attn_implementation for m in padded.modules() if hasattr(m, "attn_implementation")} == {"sdpa"}
    batch = mixed_batch()
    labels = labels_for(head, batch)
    if head == "BertForMultipleChoice":
        batch = {k: v.view(2, 2, -1) for k, v in batch.items()}
    return padded, unpadded, batch, labels


def per_token_outputs(head: str, out) -> dict[str, torch.Tensor]:
    if head == "BertModel":
        return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
    if head == "BertForPreTraining":
        return {"prediction_logits": out.prediction_logits, "seq_relationship_logits": out.seq_relationship_logits,
                "loss": out.loss}
    if head == "BertForQuestionAnswering":
        return {"start_logits": out.start_logits, "end_logits": out.end_logits, "loss": out.loss}
    return {"logits": out.logits, **({"loss": out.loss} if out.loss is not None else {})}


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])  # two attention paths on CPU
@pytest.mark.parametrize("head", HEADS)
def test_unpadded_outputs_equal_padded_at_real_tokens(head, grad):
    padded, unpadded, batch, labels = prepare(head)
    real = batch["attention_mask"].bool()
    with torch.set_grad_enabled(grad):
        a = per_token_outputs(head, padded(**batch, **labels, output_hidden_states=True))
        b = per_token_outputs(head, unpadded(**batch, **labels, output_hidden_states=True))
    for name in a:
        x, y = a[name], b[name]
        if x.dim() >= 2 and x.shape[:2] == real.shape and head != "BertForMultipleChoice":
            x, y = x[real], y[real]  # per-token outputs: compare real tokens only
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0, msg=name)


# Training mode, and eval mode with autograd on (a different attention path on CPU: see forward_packed).
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("head", HEADS)
def test_unpadded_gradients_equal_padded(head, mode):
    padded, unpadded, batch, labels = prepare(head)
    for model in (padded, unpadded):
        model.train(mode == "train")
        out = model(**batch, **labels)
        loss = getattr(out, "loss", None)
        if loss is None:  # the bare encoder: a loss over real tokens only
            loss = out.last_hidden_state[batch["attention_mask"].bool()].pow(2).sum() + out.pooler_output.sum()
        loss.backward()
    grads_a = dict(padded.named_parameters())
    for name, p in unpadded.named_parameters():
        if p.grad is None:
            assert grads_a[name].grad is None, name
            continue
        # fp32 summation-order noise grows with the gradient's size (embedding rows sum many tokens).
        want = grads_a[name].grad
        torch.testing.assert_close(p.grad, want, atol=1e-5 * max(1.0, want.abs().max().item()), rtol=1e-4, msg=name)


def test_hidden_states_of_unpadded_model_are_zero_at_padding():
    _, unpadded, batch, _ = prepare("BertModel")
    out = unpadded(**batch, output_hidden_states=True)
    pad = batch["attention_mask"] == 0
    assert out.last_hidden_state[pad].abs().max() == 0
    assert all(h[pad].abs().max() == 0 for h in out.hidden_states)


def test_bf16_autocast_unpadded_close_to_fp32(cpu_path):
    cpu_path.uses("onednn_bf16")  # the native path needs oneDNN bf16; the fallback runs on ATen
    _, unpadded, batch, _ = prepare("BertModel")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = unpadded(**batch).last_hidden_state[real]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = unpadded(**batch).last_hidden_state[real].float()
    assert (low - ref).abs().max() < 0.1


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertForPreTraining"])
def test_sparse_mlm_loss_equals_dense_loss_and_gradients(head):
    torch.manual_seed(0)
    model = getattr(bert, head)(config()).eval()
    batch = mixed_batch()
    labels = labels_for(head, batch)
    dense = model(**batch, **labels)
    dense.loss.backward()
    dense_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    sparse = model(**batch, **labels, sparse_mlm=True)
    sparse.loss.backward()
    torch.testing.assert_close(sparse.loss, dense.loss, atol=1e-6, rtol=0)
    # With gradients on, the fused projection + loss never builds the logits; without, (N, V).
    assert (sparse.logits if head == "BertForMaskedLM" else sparse.prediction_logits) is None
    with torch.no_grad():
        scored = model(**batch, **labels, sparse_mlm=True)
    logits = scored.logits if head == "BertForMaskedLM" else scored.prediction_logits
    assert logits.shape == ((labels["labels"] != -100).sum().item(), 60)  # (N, V): masked positions only
    torch.testing.assert_close(scored.loss, dense.loss, atol=1e-6, rtol=0)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, dense_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_default_model_returns_attentions_from_the_padded_path():
    """output_attentions=True runs padded: every output equals the "sdpa" model's, padding positions included."""
    padded, default, batch, _ = prepare("BertModel")
    with torch.no_grad():
        want = padded(**batch, output_attentions=True, output_hidden_states=True)
        got = default(**batch, output_attentions=True, output_hidden_states=True)
    assert len(got.attentions) == 2 and got.attentions[0].shape == (4, 3, 16, 16)
    pad = batch["attention_mask"] == 0
    assert got.last_hidden_state[pad].abs().min() > 0  # not re-padded with zeros
    for name in ("last_hidden_state", "pooler_output", "attentions", "hidden_states"):
        a, b = getattr(want, name), getattr(got, name)
        for x, y in zip(a, b) if isinstance(a, tuple) else [(a, b)]:
            torch.testing.assert_close(y, x, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertForTokenClassification"])
def test_labels_at_padding_give_the_padded_loss_and_gradients(head):
    """A token-level loss that reads padding positions (labels there not -100, e.g. labels=input_ids) needs
    the logits at padding: the default model then runs padded, so loss and gradients equal "sdpa"'s."""
    padded, default, batch, _ = prepare(head)
    labels = batch["input_ids"] % 3 if head == "BertForTokenClassification" else batch["input_ids"].clone()
    assert (labels[batch["attention_mask"] == 0] != -100).all()
    losses = []
    for model in (padded, default):
        out = model(**batch, labels=labels)
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=0)
    grads = dict(padded.named_parameters())
    for name, p in default.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-6, rtol=1e-5, msg=name)


def test_from_pretrained_defaults_to_unpadded_and_accepts_sdpa(tmp_path):
    torch.manual_seed(0)
    bert.BertForSequenceClassification(config()).save_pretrained(tmp_path)

    def modes(model):
        return {m.attn_implementation for m in model.modules() if hasattr(m, "attn_implementation")}

    assert modes(bert.BertForSequenceClassification.from_pretrained(tmp_path)) == {"unpadded"}
    assert modes(bert.BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="sdpa")) == {"sdpa"}
    assert modes(bert.BertForQuestionAnswering.from_pretrained(tmp_path, num_labels=2)) == {"sdpa"}
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        bert.BertModel.from_pretrained(tmp_path, attn_implementation="flash_attention_2")
