"""ONNX export (`lmforge.export.onnx`): graphs of tiny seeded models, run with onnxruntime on inputs of other shapes
than the export's example and compared with lmforge run eagerly (<= 1e-4). An export takes 10-30 s on this CPU, so
the default suite exports one encoder; the decoders, encoder-decoders and other heads are marked slow."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from decoder_helpers import perturb_
from seq2seq_helpers import perturbed

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lmforge.cpu.attention import CPUSelfAttention  # noqa: E402
from lmforge.export import onnx as export  # noqa: E402
from lmforge.models.bert import BertConfig, BertForMultipleChoice, BertForSequenceClassification, BertModel  # noqa: E402

TOL = 1e-4


def bert_config(**fields) -> BertConfig:
    return BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                      max_position_embeddings=64, **fields)


def ort_outputs(path, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {k: v.numpy() for k, v in feeds.items()})
    return {name: torch.from_numpy(v) for name, v in zip(names, values)}


@pytest.fixture(scope="module")
def exported_classifier(tmp_path_factory):
    torch.manual_seed(0)
    model = perturb_(BertForSequenceClassification(bert_config(num_labels=3))).eval()
    out = tmp_path_factory.mktemp("bert_onnx")
    paths = export.export_onnx(model, out)
    return model, out, paths


# ---------------------------------------------------------------------------------------------- encoders (default)
def test_encoder_graph_matches_lmforge_on_other_shapes(exported_classifier):
    model, out, _ = exported_classifier
    assert export.verify_onnx(model, out) <= TOL


def test_encoder_graph_has_dynamic_batch_and_length(exported_classifier):
    """Batch 5 x length 17 (the example was 2 x 5), rows padded to 17, 9, 3, 1 and 12 tokens."""
    model, out, _ = exported_classifier
    inputs = export.encoder_inputs(model, 5, 17, [17, 9, 3, 1, 12], seed=3)
    got = ort_outputs(out / "model.onnx", inputs)
    with torch.no_grad():
        expected = model(**inputs).logits
    assert got["logits"].shape == (5, 3)
    torch.testing.assert_close(got["logits"], expected, atol=TOL, rtol=0)


def test_encoder_graph_holds_only_standard_onnx_ops(exported_classifier):
    """The readable modules, not the CPU fast paths (oneDNN): every node is in the default ONNX domain."""
    import onnx

    _, _, paths = exported_classifier
    graph = onnx.load(str(paths[0])).graph
    assert {node.domain for node in graph.node} <= {""}
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {name: ["batch", "sequence"] for name in ("input_ids", "attention_mask", "token_type_ids")}


def test_export_leaves_the_callers_model_as_it_was(exported_classifier):
    model, _, _ = exported_classifier
    assert not model.training
    assert isinstance(model.bert.encoder.layer[0].attention.self, CPUSelfAttention)  # fast path still on
    assert model.bert.attn_implementation == "unpadded"


def test_verify_detects_a_graph_that_differs(exported_classifier, tmp_path):
    """A model changed after export no longer matches its graph: the check can fail."""
    model, out, _ = exported_classifier
    changed = BertForSequenceClassification(model.config).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.classifier.bias.add_(0.01)
    assert export.verify_onnx(changed, out) > 1e-3


def test_unsupported_model_is_a_clear_error(tmp_path):
    model = BertForMultipleChoice(bert_config())
    with pytest.raises(ValueError, match=r"cannot export BertForMultipleChoice .*supported .*bert sequence-"):
        export.export_onnx(model, tmp_path)


def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when it is not installed
    with pytest.raises(export.MissingExtraError, match=r"pip install 'lmforge\[onnx\]'"):
        export.export_onnx(BertForSequenceClassification(bert_config()), tmp_path)


# ---------------------------------------------------------------------------------------------- the rest (slow)
@pytest.mark.slow
@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False)])
def test_sentence_embedding_graph(tmp_path, pooling, normalize):
    torch.manual_seed(1)
    model = perturb_(BertModel(bert_config())).eval()
    export.export_onnx(model, tmp_path, pooling=pooling, normalize=normalize)
    assert export.verify_onnx(model, tmp_path, pooling=pooling, normalize=normalize) <= TOL
    inputs = export.encoder_inputs(model, 4, 6, [6, 2, 5, 3], seed=5)
    got = ort_outputs(tmp_path / "model.onnx", inputs)["sentence_embedding"]
    from lmforge.pipelines.sentence_embedding import pool_embeddings

    with torch.no_grad():
        expected = pool_embeddings(model(**inputs).last_hidden_state, inputs["attention_mask"], pooling, normalize)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["ElectraForTokenClassification", "ElectraForMaskedLM"])
def test_electra_heads(tmp_path, head):
    from lmforge.models import electra

    torch.manual_seed(2)
    config = electra.ElectraConfig(vocab_size=97, embedding_size=24, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37, max_position_embeddings=64, num_labels=5)
    model = perturb_(getattr(electra, head)(config)).eval()
    export.export_onnx(model, tmp_path)
    assert export.verify_onnx(model, tmp_path) <= TOL


def gpt2():
    from lmforge.models.gpt2 import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def llama():
    from lmforge.models.llama import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                        tie_word_embeddings=False))


def qwen2():
    from lmforge.models.llama import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=1, intermediate_size=48, max_position_embeddings=64,
                                        tie_word_embeddings=True))


def ort_greedy(path, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding with the causal-LM graph alone: prefill from an empty past, then one token per step."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past = {i.name: torch.zeros(ids.size(0), i.shape[1], 0, i.shape[3]).numpy()
            for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    names = [o.name for o in session.get_outputs()]
    tokens, feed_ids = [], ids
    for _ in range(steps):
        outputs = dict(zip(names, session.run(names, {"input_ids": feed_ids.numpy(), "attention_mask": mask.numpy(),
                                                      **past})))
        next_ids = torch.from_numpy(outputs["logits"][:, -1]).argmax(-1)  # (B,)
        tokens.append(next_ids)
        past = {name.replace("present.", "past_key_values."): value for name, value in outputs.items()
                if name.startswith("present.")}
        feed_ids = next_ids[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(tokens, dim=1)  # (B, steps)


@pytest.mark.slow
@pytest.mark.parametrize("build", [gpt2, llama, qwen2], ids=["gpt2", "llama-gqa", "qwen2-bias-tied"])
def test_causal_lm_graph_with_past(tmp_path, build):
    torch.manual_seed(3)
    model = perturb_(build()).eval()
    export.export_onnx(model, tmp_path)
    assert export.verify_onnx(model, tmp_path) <= TOL
    # The graph decodes as generate() does: left-padded prompts, 6 greedy tokens each.
    ids = torch.randint(1, 101, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, eos_token_id=[],
                              pad_token_id=0)[:, 6:]
    assert torch.equal(ort_greedy(tmp_path / "model.onnx", ids, mask, 6), expected)


def bart():
    from lmforge.models.bart import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(vocab_size=101, d_model=32, encoder_layers=2, decoder_layers=2,
                                                   encoder_attention_heads=4, decoder_attention_heads=4,
                                                   encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=64))


def marian():
    from lmforge.models.marian import MarianConfig, MarianMTModel

    return MarianMTModel(MarianConfig(vocab_size=101, decoder_vocab_size=89, share_encoder_decoder_embeddings=False,
                                      d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                      decoder_attention_heads=4, encoder_ffn_dim=40, decoder_ffn_dim=40,
                                      max_position_embeddings=64, pad_token_id=88, decoder_start_token_id=88))


def t5():
    from lmforge.models.t5 import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(vocab_size=101, d_model=32, d_kv=8, d_ff=40, num_layers=2,
                                               num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                                               tie_word_embeddings=False))


@pytest.mark.slow
@pytest.mark.parametrize("build", [bart, marian, t5], ids=["bart", "marian", "t5-v1.1"])
def test_seq2seq_graphs_with_past_and_cross(tmp_path, build):
    torch.manual_seed(5)
    model = perturbed(build())
    paths = export.export_onnx(model, tmp_path)
    assert [p.name for p in paths] == ["encoder.onnx", "decoder.onnx"]
    assert export.verify_onnx(model, tmp_path) <= TOL


@pytest.mark.slow
def test_export_folder_copies_the_folder_files(tmp_path):
    torch.manual_seed(6)
    model = perturb_(BertModel(bert_config())).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type":
                                                      "sentence_transformers.models.Normalize"}]))
    paths, diff = export.export_folder(folder, tmp_path / "onnx")
    assert diff <= TOL and paths == [tmp_path / "onnx" / "model.onnx"]
    assert (tmp_path / "onnx" / "config.json").is_file() and (tmp_path / "onnx" / "modules.json").is_file()
    assert not (tmp_path / "onnx" / "model.safetensors").exists()
