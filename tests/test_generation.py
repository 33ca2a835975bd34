"""model.generate against transformers' generate on tiny random GPT-2 and Llama models (weights perturbed), batched
and left-padded: greedy, beam search, repetition penalty, no-repeat n-grams, seeded sampling, stop strings and
EOS per row; streaming (whole characters); bad arguments refused before any work."""

from __future__ import annotations

import pytest
import torch
from decoder_helpers import perturb_

import lmforge
from lmforge.generation import GenerationConfig, IncrementalDecoder, TextStreamer

transformers = pytest.importorskip("transformers")

V = 99
FAMILIES = {
    "gpt2": ("GPT2LMHeadModel", lambda: transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=37, pad_token_id=0, bos_token_id=1,
        eos_token_id=2)),
    "llama": ("LlamaForCausalLM", lambda: transformers.LlamaConfig(
        vocab_size=V, hidden_size=48, intermediate_size=37, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_theta=500.0)),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """(lmforge model, transformers model) with the same perturbed weights."""
    head, config = FAMILIES[request.param]
    torch.manual_seed(0)
    theirs = perturb_(getattr(transformers, head)(config()), scale=0.2).eval()
    folder = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(folder)
    return getattr(lmforge, head).from_pretrained(folder), theirs


def left_padded(B: int = 3, T: int = 7, seed: int = 0):
    """Prompts of lengths T, T - 2, 3 (no pad id 0 inside), left-padded with 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate([T, T - 2, 3][:B]):
        mask[b, T - n:] = 1
    return ids.masked_fill(mask == 0, 0), mask


def theirs_generate(model, ids, mask, **settings):
    """transformers' generate (pad id 0 unless given); `eos_token_id=[]` (lmforge's "no EOS": None means the
    model's default) -> None."""
    if settings.get("eos_token_id") == []:
        settings["eos_token_id"] = None
    settings.setdefault("pad_token_id", 0)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, **settings)


def an_eos_that_stops_row_0(theirs, ids, mask) -> int:
    """A token that greedy decoding emits for row 0 at its 4th step: using it as EOS stops that row early."""
    out = theirs_generate(theirs, ids, mask, max_new_tokens=6, do_sample=False, eos_token_id=[])
    return int(out[0, ids.size(1) + 3])


def test_greedy_left_padded_batch_identical(pair):
    ours, theirs = pair
    ids, mask = left_padded()
    eos = an_eos_that_stops_row_0(theirs, ids, mask)
    settings = dict(max_new_tokens=12, do_sample=False, eos_token_id=eos)
    expected = theirs_generate(theirs, ids, mask, **settings)
    got = ours.generate(ids, mask, pad_token_id=0, **settings)
    assert (expected[0, ids.size(1):] == 0).any()  # row 0 stopped early and was padded
    assert torch.equal(got, expected)


def test_greedy_without_padding_or_mask_identical(pair):
    ours, theirs = pair
    ids = left_padded(B=1)[0]
    expected = theirs_generate(theirs, ids, torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                               eos_token_id=[])
    assert torch.equal(ours.generate(ids, max_new_tokens=10, eos_token_id=[]), expected)


@pytest.mark.parametrize(("num_beams", "returned", "length_penalty", "early_stopping"), [
    (3, 1, 1.0, False), (4, 2, 0.5, True), (3, 3, -1.0, "never"), (2, 2, 2.0, "never")])
def test_beam_search_left_padded_batch_identical(pair, num_beams, returned, length_penalty, early_stopping):
    ours, theirs = pair
    ids, mask = left_padded()
    eos = an_eos_that_stops_row_0(theirs, ids, mask)
    settings = dict(max_new_tokens=9, num_beams=num_beams, num_return_sequences=returned,
                    length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos, do_sample=False)
    expected = theirs_generate(theirs, ids, mask, **settings)
    got = ours.generate(ids, mask, pad_token_id=0, **settings)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("settings", [
    dict(repetition_penalty=1.8), dict(repetition_penalty=0.6), dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=1, repetition_penalty=1.3)], ids=str)
def test_repetition_penalty_and_no_repeat_ngram_identical(pair, settings):
    ours, theirs = pair
    ids, mask = left_padded()
    for beams in (1, 3):
        common = dict(max_new_tokens=10, do_sample=False, num_beams=beams, eos_token_id=[], **settings)
        expected = theirs_generate(theirs, ids, mask, **common)
        assert torch.equal(ours.generate(ids, mask, pad_token_id=0, **common), expected), beams


def test_processors_change_greedy_output(pair):
    """The processors above are not no-ops on these models (else equality with transformers proves little)."""
    ours, _ = pair
    ids, mask = left_padded()
    plain = ours.generate(ids, mask, max_new_tokens=10, eos_token_id=[])
    assert not torch.equal(plain, ours.generate(ids, mask, max_new_tokens=10, eos_token_id=[],
                                                repetition_penalty=1.8))
    ngram = ours.generate(ids, mask, max_new_tokens=10, eos_token_id=[], no_repeat_ngram_size=1)
    T = ids.size(1)
    for row in ngram.tolist():  # no new token repeats any earlier one (prompt included)
        assert all(row[t] not in row[:t] for t in range(T, len(row)))


@pytest.mark.parametrize("settings", [
    dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8, temperature=1.3), dict(min_p=0.2, top_k=0),
    dict(num_beams=2, top_k=10)], ids=str)
def test_sampling_under_torch_manual_seed_equals_transformers(pair, settings):
    ours, theirs = pair
    ids, mask = left_padded()
    common = dict(max_new_tokens=8, do_sample=True, eos_token_id=[], **settings)
    torch.manual_seed(123)
    expected = theirs_generate(theirs, ids, mask, **common)
    torch.manual_seed(123)
    assert torch.equal(ours.generate(ids, mask, pad_token_id=0, **common), expected)


def test_seeded_sampling_is_reproducible(pair):
    ours, _ = pair
    ids, mask = left_padded()
    runs = [ours.generate(ids, mask, max_new_tokens=12, do_sample=True, top_k=0, eos_token_id=[], seed=s)
            for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    g = torch.Generator().manual_seed(7)
    assert torch.equal(ours.generate(ids, mask, max_new_tokens=12, do_sample=True, top_k=0, eos_token_id=[],
                                     generator=g), runs[0])


def test_max_length_counts_the_padded_prompt(pair):
    ours, theirs = pair
    ids, mask = left_padded()
    expected = theirs_generate(theirs, ids, mask, max_length=11, do_sample=False, eos_token_id=[])
    got = ours.generate(ids, mask, max_length=11, eos_token_id=[])
    assert got.shape == (3, 11) and torch.equal(got, expected)


def test_generate_does_not_change_the_caller_objects(pair):
    ours, _ = pair
    ids, mask = left_padded()
    ids_before, mask_before = ids.clone(), mask.clone()
    config = GenerationConfig(max_new_tokens=4, eos_token_id=[], num_beams=2)
    ours.generate(ids, mask, config, repetition_penalty=1.5)
    assert torch.equal(ids, ids_before) and torch.equal(mask, mask_before)
    assert config.repetition_penalty is None and ours.training is False


@pytest.mark.parametrize(("settings", "message"), [
    (dict(top_p=0.0), "top_p must be in (0, 1]"), (dict(top_p=1.5), "top_p must be in (0, 1]"),
    (dict(num_beams=0), "num_beams must be an integer >= 1"), (dict(temperature=0.0), "temperature must be > 0"),
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences (3) must be <= num_beams (2)"),
    (dict(max_new_tokens=60), "exceed the model's context of 64"),
    (dict(stop_strings=["x"]), "stop_strings need the tokenizer"),
])
def test_bad_arguments_fail_before_any_work(pair, monkeypatch, settings, message):
    ours, _ = pair
    ids, mask = left_padded()

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(ours, "forward", no_forward)
    with pytest.raises(ValueError) as info:
        ours.generate(ids, mask, **settings)
    assert message in str(info.value)


def test_prompt_longer_than_the_context_is_refused(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="the prompt has 70 tokens, the model's context is 64"):
        ours.generate(torch.ones(1, 70, dtype=torch.long), max_new_tokens=1)


# ---------------------------------------------------------------------------------------------- text: stop strings, streaming
@pytest.fixture(scope="module")
def byte_bpe(tmp_path_factory):
    """A byte-level BPE tokenizer (lmforge-trained, 300 tokens) and transformers' reading of the same folder."""
    from lmforge.tokenizers import train_tokenizer

    folder = tmp_path_factory.mktemp("bpe")
    texts = ["the quick brown fox jumps over the lazy dog", "observation: the model said hello world",
             "机器学习很有趣 🤖 emoji 👍🏽 and more text here"] * 20
    ours = train_tokenizer(texts, folder, kind="bpe", vocab_size=300, min_frequency=2, lowercase=False)
    return ours, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def bpe_pair(byte_bpe, tmp_path_factory):
    """A tiny random Llama over the BPE tokenizer's vocabulary, in both libraries."""
    tokenizer = byte_bpe[0]
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=40,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)
    theirs = perturb_(transformers.LlamaForCausalLM(config), scale=0.3).eval()
    folder = tmp_path_factory.mktemp("bpe-llama")
    theirs.save_pretrained(folder)
    return lmforge.LlamaForCausalLM.from_pretrained(folder), theirs


def test_stop_string_split_across_tokens_stops_its_row_only(byte_bpe, bpe_pair):
    tokenizer, their_tokenizer = byte_bpe
    ours, theirs = bpe_pair
    prompt_texts = ["the quick brown", "hello"]
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompt_texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    ids, mask = batch["input_ids"], batch["attention_mask"]
    T = ids.size(1)
    free = ours.generate(ids, mask, max_new_tokens=16, eos_token_id=[])
    # A stop string made of the end of row 0's 4th new token and the start of its 5th: split across tokens.
    pieces = [tokenizer.decode(free[0, T:T + k]) for k in (4, 5)]
    assert len(pieces[1]) > len(pieces[0]) > 0
    stop = pieces[0][-1] + pieces[1][len(pieces[0])]
    first = next(k for k in range(1, 17) if stop in tokenizer.decode(free[0, T:T + k]))
    assert stop not in tokenizer.decode(free[1, T:]) and stop not in prompt_texts[0]
    got = ours.generate(ids, mask, max_new_tokens=16, eos_token_id=[], pad_token_id=tokenizer.pad_token_id,
                        stop_strings=stop, tokenizer=tokenizer)
    assert torch.equal(got[0, :T + first], free[0, :T + first])
    assert (got[0, T + first:] == tokenizer.pad_token_id).all()  # row 0 stopped on the string
    assert torch.equal(got[1], free[1])  # row 1 went on
    with torch.no_grad():  # transformers (which also needs an EOS id to pad stopped rows) agrees
        expected = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                                   stop_strings=stop, tokenizer=their_tokenizer, eos_token_id=len(tokenizer) - 1,
                                   pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(got[:, :expected.size(1)], expected)


TEXT = "机器学习 🤖 emoji 👍🏽 end"


def test_incremental_decoder_emits_whole_characters(byte_bpe):
    tokenizer = byte_bpe[0]
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(TEXT.split())  # characters really are split across byte tokens
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.add([i]) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p == "") > 0  # something was held back


class ScriptedSteps:
    """A step function that makes the model emit `script` (logits +inf on the scripted token)."""

    def __init__(self, script: list[int], vocab: int):
        self.script, self.vocab, self.t = script, vocab, 0

    def _logits(self, rows: int) -> torch.Tensor:
        logits = torch.zeros(rows, self.vocab)
        logits[:, self.script[min(self.t, len(self.script) - 1)]] = 1e4
        self.t += 1
        return logits

    def start(self, input_ids):
        return input_ids, self._logits(input_ids.size(0))

    def step(self, tokens):
        return self._logits(tokens.size(0))

    def reorder(self, index):
        pass


def test_streaming_iterator_and_streamer_emit_chinese_and_emoji_whole(byte_bpe, bpe_pair, monkeypatch):
    tokenizer = byte_bpe[0]
    ours = bpe_pair[0]
    script = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(ours, "generation_steps", lambda mask: ScriptedSteps(script, len(tokenizer)))
    prompt = tokenizer("hello", return_tensors="pt")["input_ids"]
    config = GenerationConfig(max_new_tokens=len(script), eos_token_id=[])
    pieces = list(ours.generate_stream(prompt, tokenizer, config))
    assert "".join(pieces) == TEXT and all("\ufffd" not in p for p in pieces) and len(pieces) > 3
    assert torch.is_inference_mode_enabled() is False
    received: list[str] = []
    out = ours.generate(prompt, max_new_tokens=len(script), eos_token_id=[],
                        streamer=TextStreamer(tokenizer, on_text=received.append))
    assert out[0, prompt.size(1):].tolist() == script
    assert "".join(received) == TEXT and all("\ufffd" not in p for p in received)


# ---------------------------------------------------------------------------------------------- SmolLM2-135M-Instruct
SMOLLM2_PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived",
                   "def fibonacci(n):\n    if n < 2:\n        return n\n", "机器学习是人工智能的一个分支，",
                   "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.mark.slow
def test_smollm2_greedy_64_tokens_identical_to_transformers(smollm2_gguf):
    folder, name = smollm2_gguf.parent, smollm2_gguf.name
    ours = lmforge.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = lmforge.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    rows = [tokenizer(p)["input_ids"] for p in SMOLLM2_PROMPTS]
    from lmforge.pipelines.text_generation import left_pad

    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    settings = dict(max_new_tokens=64, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    got = ours.generate(ids, mask, **settings)
    # Streaming a Chinese continuation from the real model: whole characters, joined = the decoded ids.
    prompt = tokenizer(SMOLLM2_PROMPTS[3], return_tensors="pt")["input_ids"]
    config = GenerationConfig(max_new_tokens=24, eos_token_id=[])
    pieces = list(ours.generate_stream(prompt, tokenizer, config))
    full = ours.generate(prompt, generation_config=config)
    assert "".join(pieces) == tokenizer.decode(full[0, prompt.size(1):], skip_special_tokens=True)
    # (A piece cut inside a character would show as U+FFFD and break the equality above; the model's own output
    # may hold an invalid byte sequence, which both sides then decode to U+FFFD alike.)
    assert any("\u4e00" <= c <= "\u9fff" for c in "".join(pieces))
    del ours
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    expected = theirs_generate(theirs, ids, mask, **settings)
    assert got.shape == expected.shape and got.size(1) > ids.size(1) + 32
    for b in range(len(rows)):
        assert got[b].tolist() == expected[b].tolist(), tokenizer.decode(got[b, ids.size(1):])
    assert tokenizer.decode(got[0, ids.size(1):]).startswith(" Paris")
