"""GPT-2 parity with transformers: same weights -> same outputs (fp32, 1e-5), losses equal, checkpoints both ways."""

from __future__ import annotations

import pytest
import torch
from decoder_helpers import close, hf_positions, lm_labels, padded_batch, perturb_

import lmforge
from lmforge.models import gpt2

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "gelu_new": dict(),
    "inverse-layer-scale-no-sqrt": dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True,
                                        activation_function="relu"),
    "reorder-upcast-gelu": dict(reorder_and_upcast_attn=True, activation_function="gelu"),
}
HEADS = ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification"]


def hf_config(name: str = "gelu_new", **extra) -> transformers.GPT2Config:
    # n_inner != 4 * n_embd and n_embd != n_head * 4 keep every Conv1D non-square but c_proj: a transposed
    # weight cannot load by accident.
    fields = dict(vocab_size=99, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=37, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2, num_labels=3)
    return transformers.GPT2Config(**{**fields, **CONFIGS[name], **extra})


def hf_model(head: str, config, seed: int = 0):
    torch.manual_seed(seed)
    return perturb_(getattr(transformers, head)(config), seed).eval()


def labels_for(head: str, ids, mask):
    g = torch.Generator().manual_seed(3)
    if head == "GPT2LMHeadModel":
        return lm_labels(ids, mask)
    if head == "GPT2ForSequenceClassification":
        return torch.randint(0, 3, (ids.size(0),), generator=g)
    if head == "GPT2ForTokenClassification":
        return torch.randint(0, 3, ids.shape, generator=g).masked_fill(mask == 0, -100)
    return None


def outputs(model, ids, mask, labels=None, **kw):
    args = dict(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True, **kw)
    if labels is not None:
        args["labels"] = labels
    with torch.no_grad():
        return model(**args)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_right_padded_outputs_and_loss_match(tmp_path, head, name):
    hf = hf_model(head, hf_config(name, attn_implementation="eager"))  # eager: HF returns attention probabilities
    hf.save_pretrained(tmp_path)
    ours = getattr(lmforge, head).from_pretrained(tmp_path)
    ids, mask = padded_batch(99, "right")
    labels = labels_for(head, ids, mask)
    a, b = outputs(hf, ids, mask, labels), outputs(ours, ids, mask, labels)
    main = "last_hidden_state" if head == "GPT2Model" else "logits"
    close(getattr(b, main), getattr(a, main), msg=main)  # right padding: every position, padding included
    for i, (x, y) in enumerate(zip(b.hidden_states, a.hidden_states, strict=True)):
        close(x, y, msg=f"hidden_states[{i}]")
    for i, (x, y) in enumerate(zip(b.attentions, a.attentions, strict=True)):
        close(x, y, msg=f"attentions[{i}]")
    if labels is not None:
        close(b.loss, a.loss, msg="loss")


@pytest.mark.parametrize("head", HEADS)
def test_left_padding_keeps_positions_and_matches_at_real_tokens(tmp_path, head):
    hf = hf_model(head, hf_config())
    hf.save_pretrained(tmp_path)
    ours = getattr(lmforge, head).from_pretrained(tmp_path)
    ids, mask = padded_batch(99, "left")
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))  # what lmforge does unasked
        b = ours(input_ids=ids, attention_mask=mask)
    if head == "GPT2Model":
        close(b.last_hidden_state, a.last_hidden_state, mask.bool())
    elif head == "GPT2ForSequenceClassification":
        close(b.logits, a.logits)  # pooled at the last token of each row
    else:
        close(b.logits, a.logits, mask.bool())


def test_lm_loss_with_left_padding_skips_predictions_made_at_padding(tmp_path):
    hf = hf_model("GPT2LMHeadModel", hf_config())
    hf.save_pretrained(tmp_path)
    ours = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path)
    ids, mask = padded_batch(99, "left")
    hf_labels = lm_labels(ids, mask)
    hf_labels[torch.arange(ids.size(0)), mask.argmax(1)] = -100  # first real token: predicted from padding
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), labels=hf_labels).loss
        got = ours(input_ids=ids, attention_mask=mask, labels=lm_labels(ids, mask)).loss
    close(got, expected)


def test_token_type_ids_add_token_embeddings_as_in_hf(tmp_path):
    hf = hf_model("GPT2LMHeadModel", hf_config())
    hf.save_pretrained(tmp_path)
    ours = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path)
    ids, mask = padded_batch(99, "right")
    types = (torch.arange(ids.size(1)) > 4).long().expand_as(ids)
    with torch.no_grad():
        close(ours(ids, attention_mask=mask, token_type_ids=types).logits,
              hf(ids, attention_mask=mask, token_type_ids=types).logits)


def test_cross_attention_blocks_match(tmp_path):
    config = hf_config(add_cross_attention=True, attn_implementation="eager")
    hf = hf_model("GPT2LMHeadModel", config)
    hf.save_pretrained(tmp_path)
    ours = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path)
    ids, mask = padded_batch(99, "right")
    encoder = torch.randn(ids.size(0), 7, 32, generator=torch.Generator().manual_seed(5))
    encoder_mask = torch.ones(ids.size(0), 7, dtype=torch.long)
    encoder_mask[1, 4:] = 0
    kw = dict(encoder_hidden_states=encoder, encoder_attention_mask=encoder_mask)
    a, b = outputs(hf, ids, mask, **kw), outputs(ours, ids, mask, **kw)
    close(b.logits, a.logits)
    for x, y in zip(b.cross_attentions, a.cross_attentions, strict=True):
        close(x, y)


def test_conv1d_weights_keep_hf_layout_and_state_dicts_move_untouched():
    hf = hf_model("GPT2LMHeadModel", hf_config())
    ours = lmforge.GPT2LMHeadModel(gpt2.GPT2Config.from_dict(hf.config.to_dict()))
    theirs = hf.state_dict()
    assert ours.transformer.h[0].attn.c_attn.weight.shape == (32, 96)  # (in, out), as HF stores it
    assert ours.transformer.h[0].mlp.c_fc.weight.shape == theirs["transformer.h.0.mlp.c_fc.weight"].shape == (32, 37)
    ours.load_state_dict(theirs)  # strict: same names, same shapes
    ids, mask = padded_batch(99, "right")
    with torch.no_grad():
        close(ours.eval()(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)


def test_old_checkpoint_without_prefix_and_with_mask_buffers_loads_tied(tmp_path):
    # OpenAI's original upload: base-model keys (no `transformer.`), causal-mask buffers, no lm_head.
    hf = hf_model("GPT2Model", hf_config())
    state = dict(hf.state_dict())
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    hf.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours, info = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == [] and info.unexpected_keys == [] and info.mismatched_keys == []
    assert ours.lm_head.weight is ours.transformer.wte.weight
    ids, mask = padded_batch(99, "right")
    with torch.no_grad():
        close(ours.transformer(ids, attention_mask=mask).last_hidden_state,
              hf(ids, attention_mask=mask).last_hidden_state)


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded-safetensors", "sharded-bin"])
def test_lmforge_checkpoints_load_in_transformers(tmp_path, fmt):
    hf = hf_model("GPT2LMHeadModel", hf_config())
    hf.save_pretrained(tmp_path / "hf")
    ours = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    options = dict(safe_serialization="bin" not in fmt)
    if fmt.startswith("sharded"):
        options["max_shard_size"] = 20_000
    ours.save_pretrained(tmp_path / "ours", **options)
    files = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert (len([f for f in files if "-of-" in f]) > 1) == fmt.startswith("sharded"), files
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    back = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path / "ours")
    ids, mask = padded_batch(99, "right")
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).logits
        close(again(ids, attention_mask=mask).logits, expected)
        close(back(ids, attention_mask=mask).logits, expected)


def test_sequence_classification_without_pad_token_refuses_batches(tmp_path):
    hf = hf_model("GPT2ForSequenceClassification", hf_config(pad_token_id=None))
    hf.save_pretrained(tmp_path)
    ours = lmforge.GPT2ForSequenceClassification.from_pretrained(tmp_path)
    ids, _ = padded_batch(99, "right")
    with pytest.raises(ValueError, match="pad token"):
        ours(ids)
    with torch.no_grad():
        close(ours(ids[:1]).logits, hf(ids[:1]).logits)


def test_positions_past_n_positions_are_refused():
    model = lmforge.GPT2Model(gpt2.GPT2Config(vocab_size=99, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="n_positions=8"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_reorder_and_upcast_in_bf16_follows_hf_eager(tmp_path):
    # The flag only matters in half precision: scores and softmax in fp32 from bf16 queries and keys.
    hf = hf_model("GPT2LMHeadModel", hf_config("reorder-upcast-gelu", attn_implementation="eager"))
    hf.save_pretrained(tmp_path)
    ours = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    plain = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    for block in plain.transformer.h:
        block.attn.reorder_and_upcast = False
    hf = hf.to(torch.bfloat16)
    ids, mask = padded_batch(99, "right")
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).logits.float()
        got = ours(ids, attention_mask=mask).logits.float()
        without = plain(ids, attention_mask=mask).logits.float()
    real = mask.bool()
    assert (got - expected)[real].abs().max() < (without - expected)[real].abs().max()
    close(got, expected, real, atol=1e-3)
