"""GGUF reading on tiny files written here: weights (dequantized, llama.cpp's Q/K permutation undone) and the
byte-level BPE tokenizer equal transformers' own GGUF loading; saved folders load in transformers; bad files
get clear errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from decoder_helpers import close, padded_batch, perturb_

import lmforge
from lmforge.gguf import GGUFError

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

Q = gguf.GGMLQuantizationType
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 96, 2  # rows of 64/96 values: whole 32-value quant blocks
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġ Ġ", "ĠĠ Ġ", "o n", "Ġ o"]
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
TEXTS = ["the then in a  b", "Ünïcödé ñ and ß", "emoji 🤖🚀!", "   runs\t\tof\n\n\nwhitespace  ", "中文字符 and 日本語",
         "<|im_start|>user\nhi<|im_end|>", "x<|endoftext|>y", "1999 12345 a  1"]


def byte_tokens() -> list[str]:
    from lmforge.gguf import _byte_alphabet

    return list(_byte_alphabet().values())


def tokenizer_fields() -> tuple[list[str], list[int]]:
    tokens = SPECIALS + byte_tokens() + ["".join(m.split(" ")) for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types


VOCAB = len(tokenizer_fields()[0])


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows (HF halves -> interleaved pairs), written independently."""
    d = w.shape[0] // heads
    return np.concatenate([np.stack([h[: d // 2], h[d // 2:]], axis=1).reshape(d, *w.shape[1:])
                           for h in np.split(w, heads)])


GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf_key: str) -> str:
    if hf_key == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_key == "model.norm.weight":
        return "output_norm.weight"
    if hf_key == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf_key.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{GGUF_NAMES[module]}.{kind}"


def write_gguf(path, state: dict[str, torch.Tensor], *, arch: str = "llama", types: dict[str, Q] | None = None,
               tokenizer: bool = True, tied: bool = True, extra_tensors: dict | None = None, pre: str = "smollm"):
    """A GGUF file as llama.cpp writes one: metadata, then tensors (Q/K rows permuted for llama)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(1000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(VOCAB)
    if tokenizer:
        tokens, token_types = tokenizer_fields()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(MERGES)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_pad_token_id(2)
        writer.add_add_bos_token(False)
        writer.add_chat_template(CHAT_TEMPLATE)
    for key, tensor in state.items():
        if tied and key == "lm_head.weight":
            continue
        name = gguf_name(key)
        values = tensor.detach().float().numpy()
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            values = llama_cpp_permute(values, HEADS if ".attn_q." in name else KV_HEADS)
        kind = (types or {}).get(name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0], Q.F32)
        if values.ndim == 1 or kind == Q.F32:
            writer.add_tensor(name, np.ascontiguousarray(values))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
    for name, (data, kind) in (extra_tensors or {}).items():
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def hf_llama(tie: bool = True):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                      num_key_value_heads=KV_HEADS, rope_theta=1000.0, rms_norm_eps=1e-5,
                                      tie_word_embeddings=tie, max_position_embeddings=64)
    return perturb_(transformers.LlamaForCausalLM(config)).eval()


MIXED = {"token_embd": Q.Q8_0, "attn_q": Q.Q4_1, "attn_k": Q.Q4_0, "attn_v": Q.Q5_0, "attn_output": Q.Q5_1,
         "ffn_gate": Q.F16, "ffn_up": Q.BF16, "ffn_down": Q.Q4_1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    hf = hf_llama()
    write_gguf(folder / "f32.gguf", hf.state_dict())
    write_gguf(folder / "mixed.gguf", hf.state_dict(), types=MIXED)
    return folder, hf


def test_f32_file_equals_the_original_model(tiny):
    # No quantization: the permutation must be undone exactly for the logits to match the model written.
    folder, hf = tiny
    ours = lmforge.AutoModelForCausalLM.from_pretrained(folder, gguf_file="f32.gguf")
    assert type(ours).__name__ == "LlamaForCausalLM" and ours.config.tie_word_embeddings
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    for key, value in hf.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, atol=0, rtol=0, msg=key)
    ids, mask = padded_batch(VOCAB, "right")
    with torch.no_grad():
        close(ours(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)


def test_quantized_file_matches_transformers_gguf_loading(tiny):
    folder, _ = tiny
    ours = lmforge.AutoModelForCausalLM.from_pretrained(folder, gguf_file="mixed.gguf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file="mixed.gguf",
                                                               dtype=torch.float32).eval()
    mine = ours.state_dict()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(mine[key], value, atol=0, rtol=0, msg=key)  # same dequantized numbers
    ids, mask = padded_batch(VOCAB, "right")
    with torch.no_grad():
        close(ours(ids, attention_mask=mask).logits, theirs(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("kind", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_1"])
def test_block_dequantization_equals_transformers(kind):
    dequantize = pytest.importorskip("transformers.integrations.gguf.dequant").dequantize

    block, size = gguf.GGML_QUANT_SIZES[Q[kind]]
    # Random blocks: fp16 scale fields may hold inf/nan, which both must propagate alike.
    raw = np.random.default_rng(0).integers(0, 256, (4, size * 2), dtype=np.uint8)
    ours = gguf.quants.dequantize(raw, Q[kind])
    theirs = dequantize(torch.from_numpy(raw.copy()), int(Q[kind]), torch.float32).reshape(ours.shape).numpy()
    finite = np.isfinite(ours) & np.isfinite(theirs)
    assert finite.mean() > 0.5 and ours.shape == (4, block * 2)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=0)


@pytest.mark.parametrize("pre", ["smollm", "qwen2", "llama-bpe"])
def test_tokenizer_ids_equal_transformers(tiny, tmp_path, pre):
    folder, hf = tiny
    name = "f32.gguf"
    if pre != "smollm":  # the same vocabulary under another pre-tokenizer name (its split regex)
        folder, name = tmp_path, write_gguf(tmp_path / "t.gguf", hf.state_dict(), pre=pre).name
    ours = lmforge.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    theirs = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    for text in TEXTS:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
        assert ours.decode(ours(text)["input_ids"]) == text
    assert ours("<|im_start|>hi")["input_ids"][0] == 1  # control tokens stay whole
    assert ours.bos_token == "<|im_start|>" and ours.eos_token == ours.pad_token == "<|im_end|>"
    assert "token_type_ids" not in ours("hi")


def test_saved_folder_is_an_ordinary_hf_folder(tiny, tmp_path):
    folder, _ = tiny
    model = lmforge.AutoModelForCausalLM.from_pretrained(folder, gguf_file="mixed.gguf")
    tokenizer = lmforge.AutoTokenizer.from_pretrained(folder, gguf_file="mixed.gguf")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert hf_tokenizer(TEXTS, padding=True)["input_ids"] == batch["input_ids"].tolist()
    with torch.no_grad():
        close(hf_model(**batch).logits, model(**batch).logits, batch["attention_mask"].bool())
    rendered = hf_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n"
    again = lmforge.AutoTokenizer.from_pretrained(tmp_path)
    assert again.chat_template == CHAT_TEMPLATE and again(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]


def test_bf16_and_a_new_head(tiny, caplog):
    folder, _ = tiny
    model = lmforge.LlamaForCausalLM.from_pretrained(folder, gguf_file=folder / "f32.gguf", torch_dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        classifier = lmforge.AutoModelForSequenceClassification.from_pretrained(folder, gguf_file="f32.gguf",
                                                                                num_labels=3)
    assert not any(p.is_meta for p in classifier.parameters()) and classifier.score.weight.std() > 0
    assert classifier.score.weight.shape == (3, HIDDEN) and classifier.config.num_labels == 3
    assert "score.weight" in caplog.text  # reported as newly initialised


def test_qwen2_architecture_keeps_q_k_rows_and_reads_biases(tmp_path):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
                                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                      num_key_value_heads=KV_HEADS, rope_theta=1000.0, rms_norm_eps=1e-5,
                                      tie_word_embeddings=False, max_position_embeddings=64)
    hf = perturb_(transformers.Qwen2ForCausalLM(config)).eval()
    write_gguf(tmp_path / "q.gguf", hf.state_dict(), arch="qwen2", tied=False)
    ours = lmforge.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf")
    assert type(ours).__name__ == "Qwen2ForCausalLM" and not ours.config.tie_word_embeddings
    ids, mask = padded_batch(VOCAB, "right")
    with torch.no_grad():
        close(ours(ids, attention_mask=mask).logits, hf(ids, attention_mask=mask).logits)


# ---------------------------------------------------------------------------------------------- bad files
def test_not_a_gguf_file(tmp_path):
    (tmp_path / "model.gguf").write_text('{"this": "is json"}')
    with pytest.raises(GGUFError, match=r"model.gguf: not a GGUF file \(it starts with b'\{\"th'"):
        lmforge.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf")


def test_truncated_file(tiny, tmp_path):
    folder, _ = tiny
    data = (folder / "f32.gguf").read_bytes()
    for cut in (len(data) - 100, 3000):  # inside the tensor data; inside the header
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(GGUFError, match=r"cut.gguf: .*truncated"):
            lmforge.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="cut.gguf")


def test_unsupported_architecture(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"m.gguf: architecture 'mamba' is not supported; supported: \['llama'"):
        lmforge.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf")


def test_unsupported_quantization_type(tmp_path):
    hf = hf_llama()
    block, size = gguf.GGML_QUANT_SIZES[Q.IQ4_NL]
    state = {k: v for k, v in hf.state_dict().items() if k != "model.layers.1.mlp.up_proj.weight"}
    raw = np.zeros((FFN, HIDDEN // block * size), dtype=np.uint8)
    write_gguf(tmp_path / "iq.gguf", state, extra_tensors={"blk.1.ffn_up.weight": (raw, Q.IQ4_NL)})
    with pytest.raises(GGUFError, match=r"iq.gguf: tensor 'blk.1.ffn_up.weight' has quantization type IQ4_NL"):
        lmforge.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="iq.gguf")


def test_unknown_tensor_is_refused(tmp_path):
    write_gguf(tmp_path / "x.gguf", hf_llama().state_dict(),
               extra_tensors={"rope_freqs.weight": (np.ones(8, dtype=np.float32), Q.F32)})
    with pytest.raises(GGUFError, match=r"x.gguf: tensor 'rope_freqs.weight' is not one lmforge reads"):
        lmforge.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="x.gguf")


def test_unsupported_tokenizer_model(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "a"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"t.gguf: tokenizer model 'llama' is not read by lmforge"):
        lmforge.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf: GGUF file not found"):
        lmforge.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="nothing.gguf")
