"""CPU fast paths (`lmforge.cpu.fast_paths`): applied at construction, they change classes only; every BERT head
gives the readable blocks' outputs (fp32 within 1e-5) and gradients, in both attention modes."""

from __future__ import annotations

import copy

import pytest
import torch
from test_unpadding import HEADS, config, labels_for, mixed_batch

from lmforge.cpu import fast_paths
from lmforge.cpu.attention import CPUSelfAttention
from lmforge.cpu.losses import FusedLossMaskedLMHead
from lmforge.models.bert import model as bert
from lmforge.nn.attention import EncoderSelfAttention
from lmforge.nn.heads import MaskedLMHead


def build(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = config().replace(num_labels=2) if head == "BertForQuestionAnswering" else config()
    model = getattr(bert, head)(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from init: zero biases and unit LayerNorms hide bugs
    return model


def batch_for(head: str) -> dict[str, torch.Tensor]:
    batch = mixed_batch()
    batch = {**batch, **labels_for(head, batch)}
    if head == "BertForMultipleChoice":  # (choices of 2 examples, 2 choices each)
        batch = {k: v.view(2, 2, -1) if k != "labels" else v for k, v in batch.items()}
    return batch


def tensors(out) -> dict[str, torch.Tensor]:
    fields = dict(zip(out.keys(), out.to_tuple()))  # the fields that are not None
    flat = {}
    for k, v in fields.items():
        for i, t in enumerate(v if isinstance(v, tuple) else (v,)):
            flat[f"{k}.{i}"] = t
    return flat


def classes(model) -> set[type]:
    return {type(m) for m in model.modules()}


def test_applied_at_construction_and_restored():
    model = bert.BertModel(config())
    assert type(model.encoder.layer[0].attention.self) is CPUSelfAttention
    readable = fast_paths.restore(copy.deepcopy(model))
    assert type(readable.encoder.layer[0].attention.self) is EncoderSelfAttention
    assert not classes(readable) & set(fast_paths.READABLE)
    assert classes(fast_paths.apply(copy.deepcopy(readable))) == classes(model)  # idempotent round trip


def test_applied_by_from_pretrained_and_keys_unchanged(tmp_path):
    model = build("BertForPreTraining")
    readable = fast_paths.restore(copy.deepcopy(model))
    assert list(readable.state_dict()) == list(model.state_dict())
    readable.save_pretrained(tmp_path)
    loaded = bert.BertForPreTraining.from_pretrained(tmp_path)
    assert classes(loaded) == classes(model)
    assert list(loaded.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("attn", ["unpadded", "sdpa"])
@pytest.mark.parametrize("head", HEADS)
def test_fast_paths_equal_readable_blocks_in_inference(head, attn):
    fast = build(head).eval().set_attn_implementation(attn)
    readable = fast_paths.restore(copy.deepcopy(fast))
    batch = batch_for(head)
    with torch.no_grad():
        got, want = tensors(fast(**batch)), tensors(readable(**batch))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("head", ["BertForPreTraining", "BertForTokenClassification"])
def test_fast_paths_equal_readable_blocks_in_training(head):
    fast = build(head).train()  # dropout is 0 in `config()`: deterministic
    readable = fast_paths.restore(copy.deepcopy(fast))
    batch = batch_for(head)
    losses = []
    for model in (fast, readable):
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)
    for (name, p), q in zip(fast.named_parameters(), readable.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=0, msg=name)


def test_sparse_mlm_loss_fused_head_equals_readable_head(cpu_path):
    fast = build("BertForPreTraining").train()
    assert type(fast.cls.predictions) is FusedLossMaskedLMHead
    readable = fast_paths.restore(copy.deepcopy(fast))
    assert type(readable.cls.predictions) is MaskedLMHead
    batch = batch_for("BertForPreTraining")
    losses = []
    for model in (fast, readable):
        out = model(**batch, sparse_mlm=True)
        assert out.prediction_logits is None  # with gradients on, the sparse head gives the loss only
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)
    for (name, p), q in zip(fast.named_parameters(), readable.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=0, msg=name)
