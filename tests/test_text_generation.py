"""The text surface of generation: chat templates rendered as transformers renders them, the text-generation
pipeline, the chat loop's history, and sliding-window perplexity equal to the transformers guide's."""

from __future__ import annotations

import io

import pytest
import torch
from decoder_helpers import perturb_

import lmforge
from lmforge.eval.perplexity import sliding_window_perplexity
from lmforge.generation import GenerationConfig
from lmforge.recipes.generate import SamplingOptions, run_chat

transformers = pytest.importorskip("transformers")

CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "中文 and emoji 🤖?"},
     {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "  spaces\n\nand lines  "}],
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A byte-level BPE tokenizer with a chat template in tokenizer_config.json, and a tiny random Llama."""
    from lmforge.tokenizers import train_tokenizer

    folder = tmp_path_factory.mktemp("tiny-chat")
    texts = ["the quick brown fox jumps over the lazy dog", "hello world, said the model", "机器学习 🤖 emoji"] * 20
    tokenizer = train_tokenizer(texts, folder, kind="bpe", vocab_size=300, min_frequency=2, lowercase=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=40,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(2)
    perturb_(transformers.LlamaForCausalLM(config), scale=0.3).save_pretrained(folder)
    return folder


def test_chat_template_from_tokenizer_config_renders_as_transformers(folder):
    ours = lmforge.AutoTokenizer.from_pretrained(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            text = ours.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
            assert text == theirs.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
            ids = ours.apply_chat_template(messages, add_generation_prompt=prompt, return_dict=False)
            assert ids == theirs.apply_chat_template(messages, add_generation_prompt=prompt, return_dict=False)


def test_smollm2_chat_template_renders_as_transformers(smollm2_gguf, tmp_path):
    ours = lmforge.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    assert ours.chat_template is not None  # from the GGUF metadata
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            text = ours.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
            assert text == theirs.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
    # Without a system message SmolLM2's template adds its default one.
    assert ours.apply_chat_template(CONVERSATIONS[0], tokenize=False).startswith("<|im_start|>system\nYou are")
    encoded = ours.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], theirs.apply_chat_template(
        CONVERSATIONS[1], add_generation_prompt=True, return_tensors="pt")["input_ids"])


def test_chat_template_missing_or_bad_messages_are_clear_errors(folder):
    tokenizer = lmforge.AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="message 0 must be a dict with 'role'"):
        tokenizer.apply_chat_template(["hi"], tokenize=False)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        tokenizer.apply_chat_template(CONVERSATIONS[0])


# ---------------------------------------------------------------------------------------------- pipeline
def test_pipeline_text_and_chat_inputs(folder):
    generator = lmforge.pipeline("text-generation", model=str(folder))
    tokenizer, model = generator.tokenizer, generator.model
    out = generator("the quick", max_new_tokens=6)
    assert len(out) == 1 and out[0]["generated_text"].startswith("the quick")
    new = generator("the quick", max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    assert out[0]["generated_text"] == "the quick" + new
    ids = tokenizer("the quick", return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=6)
    assert new == tokenizer.decode(expected[0, ids.size(1):], skip_special_tokens=True)

    chat = generator(CONVERSATIONS[0], max_new_tokens=5)[0]["generated_text"]
    assert chat[:-1] == CONVERSATIONS[0] and chat[-1]["role"] == "assistant"
    prompt = tokenizer.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, return_tensors="pt")
    answer = model.generate(prompt["input_ids"], max_new_tokens=5)[0, prompt["input_ids"].size(1):]
    assert chat[-1]["content"] == tokenizer.decode(answer, skip_special_tokens=True)


def test_pipeline_batches_of_mixed_lengths_equal_one_by_one(folder):
    generator = lmforge.pipeline("text-generation", model=str(folder), batch_size=3)
    prompts = ["the", "hello world, said the", "the quick brown fox jumps"]
    together = generator(prompts, max_new_tokens=5, return_full_text=False)
    alone = [generator(p, max_new_tokens=5, return_full_text=False) for p in prompts]
    assert together == alone
    beams = generator(prompts[1], max_new_tokens=4, num_beams=3, num_return_sequences=2)
    assert len(beams) == 2 and beams[0] != beams[1]


def test_pipeline_leaves_the_callers_model_and_tokenizer_alone(folder):
    model = lmforge.AutoModelForCausalLM.from_pretrained(folder).train()
    tokenizer = lmforge.AutoTokenizer.from_pretrained(folder)
    generator = lmforge.pipeline("text-generation", model=model, tokenizer=tokenizer)
    generator(["a", "the quick brown"], max_new_tokens=3)
    assert model.training and tokenizer.padding_side == "right"


# ---------------------------------------------------------------------------------------------- chat loop
def test_chat_loop_keeps_history_and_resets(folder, monkeypatch):
    model = lmforge.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = lmforge.AutoTokenizer.from_pretrained(folder)
    prompts: list[str] = []

    def fake_stream(ids, tok, config, generator=None):
        prompts.append(tok.decode(ids[0]))
        yield f"answer {len(prompts)}"

    monkeypatch.setattr(model, "generate_stream", fake_stream)
    written: list[str] = []
    turns = io.StringIO("first question\n\nsecond question\n/reset\nthird question\n")
    answers = run_chat(model, tokenizer, SamplingOptions(max_new_tokens=4), "Be brief.", turns, written.append,
                       interactive=False)
    assert answers == 3
    assert "".join(written) == "answer 1\nanswer 2\n(history cleared)\nanswer 3\n"
    assert "first question" in prompts[1] and "answer 1" in prompts[1]  # history kept
    assert "first question" not in prompts[2] and "Be brief." in prompts[2]  # reset keeps the system message
    assert all(p.endswith("<|im_start|>assistant\n") for p in prompts)


# ---------------------------------------------------------------------------------------------- perplexity
def guide_perplexity(model, ids: torch.Tensor, max_length: int, stride: int) -> torch.Tensor:
    """The loop of the transformers guide "Perplexity of fixed-length models", as written there."""
    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            neg_log_likelihood = model(input_ids, labels=target_ids).loss
        num_valid_tokens = (target_ids != -100).sum().item()
        num_loss_tokens = num_valid_tokens - target_ids.size(0)
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return torch.exp(nll_sum / n_tokens)


@pytest.mark.parametrize(("max_length", "stride"), [(32, 32), (32, 8), (64, 20)])
def test_perplexity_equals_the_transformers_guide(tmp_path, max_length, stride):
    config = transformers.GPT2Config(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    theirs = perturb_(transformers.GPT2LMHeadModel(config), scale=0.1).eval()
    theirs.save_pretrained(tmp_path)
    ours = lmforge.GPT2LMHeadModel.from_pretrained(tmp_path)
    ids = torch.randint(0, 99, (1, 150), generator=torch.Generator().manual_seed(1))
    got = sliding_window_perplexity(ours, ids, max_length, stride)
    expected = guide_perplexity(theirs, ids, max_length, stride)
    assert got.perplexity == pytest.approx(float(expected), rel=1e-5)
    assert got.windows == len(range(0, 150 - max_length + stride, stride)) and got.tokens == 150
    assert 20 < got.perplexity < 1000  # a random model over 99 tokens


def test_perplexity_bad_arguments():
    model = lmforge.GPT2LMHeadModel(lmforge.GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="stride must be in"):
        sliding_window_perplexity(model, torch.zeros(1, 20, dtype=torch.long), 8, 9)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        sliding_window_perplexity(model, torch.zeros(1, 1, dtype=torch.long), 8, 4)


def test_generation_config_is_not_shared_between_calls(folder):
    model = lmforge.AutoModelForCausalLM.from_pretrained(folder)
    config = GenerationConfig(max_new_tokens=3, eos_token_id=[])
    ids = torch.tensor([[5, 6, 7]])
    first = model.generate(ids, generation_config=config)
    model.generate(ids, generation_config=config, num_beams=2)
    assert config.num_beams == 1 and torch.equal(model.generate(ids, generation_config=config), first)
