"""ELECTRA beyond parity: the CPU fast paths (as BERT's, `test_fast_paths.py`), and the pretraining objective
(`ElectraPretrainingModel`): shared embeddings, replacements sampled from the generator, labels, loss, no gradient
through sampling, resume bit-identical."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_fast_paths import classes, tensors
from test_unpadding import mixed_batch

from lmforge.cpu import fast_paths
from lmforge.cpu.attention import CPUSelfAttention
from lmforge.cpu.mlp import OneDNNDenseActNorm
from lmforge.models.electra import ElectraConfig, ElectraPretrainingModel, generator_config
from lmforge.models.electra import model as electra
from lmforge.training.loop import TrainArgs, train

HEADS = ["ElectraModel", "ElectraForPreTraining", "ElectraForMaskedLM", "ElectraForSequenceClassification",
         "ElectraForTokenClassification"]
MASK_ID = 4


def config(**changes) -> ElectraConfig:
    fields = dict(vocab_size=60, embedding_size=16, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                  intermediate_size=40, max_position_embeddings=16, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, num_labels=3)
    return ElectraConfig(**{**fields, **changes})


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from init: zero biases and unit LayerNorms hide bugs
    return model


def build(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return perturb(getattr(electra, head)(config()))


def labelled_batch(head: str) -> dict[str, torch.Tensor]:
    batch = mixed_batch()  # lengths 1, 16, 5, 15, right-padded, vocabulary < 60
    g = torch.Generator().manual_seed(1)
    B, T = batch["input_ids"].shape
    pad = batch["attention_mask"] == 0
    if head == "ElectraForPreTraining":
        return {**batch, "labels": torch.randint(0, 2, (B, T), generator=g)}
    if head in ("ElectraForMaskedLM", "ElectraForTokenClassification"):
        high = 60 if head == "ElectraForMaskedLM" else 3
        return {**batch, "labels": torch.randint(0, high, (B, T), generator=g).masked_fill(pad, -100)}
    if head == "ElectraForSequenceClassification":
        return {**batch, "labels": torch.tensor([0, 1, 2, 0])}
    return batch


def masked_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """A pretraining batch as the ELECTRA collator makes it: [MASK] at ~1/4 of the real tokens, labels there."""
    batch = mixed_batch()
    g = torch.Generator().manual_seed(seed)
    real = batch["attention_mask"] == 1
    chosen = (torch.rand(real.shape, generator=g) < 0.25) & real
    chosen[:, 0] |= real[:, 0]  # at least one per sequence
    labels = batch["input_ids"].masked_fill(~chosen, -100)
    return {**batch, "input_ids": batch["input_ids"].masked_fill(chosen, MASK_ID), "labels": labels}


# ---------------------------------------------------------------------------------------------- fast paths
def test_fast_paths_applied_at_construction_and_restored():
    model = electra.ElectraForMaskedLM(config())
    assert type(model.electra.encoder.layer[0].attention.self) is CPUSelfAttention
    assert type(model.generator_predictions) is OneDNNDenseActNorm
    readable = fast_paths.restore(copy.deepcopy(model))
    assert not classes(readable) & set(fast_paths.READABLE)
    assert list(readable.state_dict()) == list(model.state_dict())
    assert classes(fast_paths.apply(copy.deepcopy(readable))) == classes(model)


@pytest.mark.parametrize("attn", ["unpadded", "sdpa"])
@pytest.mark.parametrize("head", HEADS)
def test_fast_paths_equal_readable_blocks_in_inference(cpu_path, head, attn):
    fast = build(head).eval().set_attn_implementation(attn)
    readable = fast_paths.restore(copy.deepcopy(fast))
    batch = labelled_batch(head)
    with torch.no_grad():
        got, want = tensors(fast(**batch)), tensors(readable(**batch))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=name)


def test_fast_paths_equal_readable_blocks_in_pretraining(cpu_path):
    """The whole objective in training mode: equal losses and gradients (replacements from one seed)."""
    torch.manual_seed(0)
    fast = perturb(ElectraPretrainingModel(config())).train()
    readable = fast_paths.restore(copy.deepcopy(fast))
    batch = masked_batch()
    losses = []
    for model in (fast, readable):
        out = model(**batch, sampling_generator=torch.Generator().manual_seed(5))
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)
    for (name, p), q in zip(fast.named_parameters(), readable.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=0, msg=name)


# ---------------------------------------------------------------------------------------------- objective
def test_generator_is_a_fraction_of_the_discriminator_and_shares_its_embeddings():
    disc = config(hidden_size=64, num_attention_heads=4, intermediate_size=256, embedding_size=32)
    gen = generator_config(disc, 0.25)
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == (16, 1, 64)
    assert (gen.num_hidden_layers, gen.embedding_size, gen.vocab_size) == (2, 32, 60)
    model = ElectraPretrainingModel(disc)
    assert model.generator.electra.embeddings is model.discriminator.electra.embeddings
    assert model.generator.generator_lm_head.weight is model.discriminator.electra.embeddings.word_embeddings.weight
    assert hasattr(model.generator.electra, "embeddings_project")  # 32 -> 16
    shared = sum(p.numel() for p in model.discriminator.electra.embeddings.parameters())
    assert sum(p.numel() for p in model.parameters()) == (
        model.generator.num_parameters() + model.discriminator.num_parameters() - shared)


def test_replacements_come_from_the_generator_and_originals_are_not_replaced():
    """A generator that always says token 7: every masked position gets 7; where the original was 7, the
    discriminator's label is "original"; unmasked and padding tokens are never replaced."""
    torch.manual_seed(0)
    model = ElectraPretrainingModel(config()).eval()
    with torch.no_grad():
        model.generator.generator_lm_head.bias.fill_(-1e4)[7] = 1e4
    batch = masked_batch()
    labels = batch["labels"]
    labels[0, 0] = 7  # an original token equal to the sample
    out = model(**batch)
    masked = labels != -100
    assert torch.equal(out.replaced, masked & (labels != 7))
    assert out.generator_logits.shape == (int(masked.sum()), 60)
    assert out.logits.shape == labels.shape


def test_loss_is_mlm_plus_weighted_rtd_and_sampling_passes_no_gradient():
    torch.manual_seed(0)
    model = perturb(ElectraPretrainingModel(config(), disc_weight=50.0)).train()
    batch = masked_batch()
    out = model(**batch, sampling_generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.loss.detach(), out.mlm_loss + 50.0 * out.rtd_loss, atol=1e-5, rtol=0)
    real = batch["attention_mask"] == 1
    want_rtd = torch.nn.functional.binary_cross_entropy_with_logits(out.logits[real], out.replaced[real].float())
    torch.testing.assert_close(out.rtd_loss, want_rtd.detach(), atol=1e-6, rtol=0)
    out.loss.backward()
    # The generator's own layers learn from the MLM loss only: the same gradients as from mlm_loss alone.
    with_rtd = {n: p.grad.clone() for n, p in model.generator.named_parameters() if "embeddings." not in n}
    model.zero_grad()
    hidden = model.generator.electra(batch["input_ids"], batch["attention_mask"],
                                     batch["token_type_ids"]).last_hidden_state
    masked = batch["labels"] != -100
    logits = model.generator.mlm_head()(hidden[masked])
    torch.nn.functional.cross_entropy(logits, batch["labels"][masked]).backward()
    for name, grad in with_rtd.items():
        torch.testing.assert_close(grad, dict(model.generator.named_parameters())[name].grad, atol=1e-6, rtol=0,
                                   msg=name)


def test_same_sampling_seed_same_output():
    torch.manual_seed(0)
    model = ElectraPretrainingModel(config()).eval()
    runs = [model(**masked_batch(), sampling_generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    assert torch.equal(runs[0].replaced, runs[1].replaced) and torch.equal(runs[0].logits, runs[1].logits)


def test_resume_is_bit_identical(tmp_path):
    """As the BERT test in test_training_checkpoint.py: dropout on, replacements from torch's global
    generator (kept by the checkpoint), shared embeddings saved once and loaded back."""

    class Batches:
        def __init__(self):
            self.index = 0

        def __iter__(self):
            while True:
                self.index += 1
                yield masked_batch(seed=self.index)

        def state_dict(self):
            return {"index": self.index}

        def load_state_dict(self, state):
            self.index = state["index"]

    def model(seed):
        torch.manual_seed(seed)
        return ElectraPretrainingModel(config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))

    common = {"learning_rate": 1e-3, "warmup_steps": 2, "save_every": 3, "progress": False, "schedule_steps": 6}
    full_model = model(0)
    full = train(full_model, Batches(), TrainArgs(tmp_path / "a", max_steps=6, **common))
    train(model(0), Batches(), TrainArgs(tmp_path / "b", max_steps=3, **common))
    resumed_model = model(1)
    resumed = train(resumed_model, Batches(), TrainArgs(tmp_path / "b", max_steps=6, resume=True, **common))
    assert resumed.losses == full.losses[3:]
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_model.generator.electra.embeddings is resumed_model.discriminator.electra.embeddings
    records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert {"mlm_loss", "rtd_loss"} <= set(records[-1])
