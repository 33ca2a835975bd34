"""`GenerationMixin`: `model.generate(...)` and `model.generate_stream(...)` for every causal LM (a base class
of `GPT2LMHeadModel` and `LlamaForCausalLM` / `Qwen2ForCausalLM`); `Seq2SeqGenerationMixin` for encoder-decoders
(BART's and Marian's LM heads, `T5ForConditionalGeneration`).

    out = model.generate(**tokenizer(prompts, padding=True, return_tensors="pt"), max_new_tokens=32)
    for text in model.generate_stream(ids, tokenizer, GenerationConfig(max_new_tokens=64)): print(text, end="")

The call checks every setting, then asks the model for the prompt to extend and its step function
(`generation_setup`: decoders run the prompt into a KV cache, then one token per step; encoder-decoders encode
the source once and extend the decoder start token, `Seq2SeqSteps`) and the loop (`decoding.sample_steps` or `decoding.beam_search`). The caller's model and
tensors are not modified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import Tensor

from ..cpu import onednn
from .config import GenerationConfig
from .decoding import beam_search, sample_steps
from .logits import build_processors
from .steps import CausalLMSteps, Seq2SeqSteps
from .stopping import Stopping, StopStrings
from .streaming import IncrementalDecoder

logger = logging.getLogger(__name__)


class GenerationMixin:
    """Adds `generate` / `generate_stream`; the host is a PreTrainedModel whose forward takes
    (input_ids, attention_mask, past_key_values, logits_to_keep) and returns `.logits`."""

    def generation_steps(self, attention_mask: Tensor) -> CausalLMSteps:
        """The step function of the decoding loops (see `generation.steps`)."""
        return CausalLMSteps(self, attention_mask)

    def generation_setup(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, object]:
        """(prompt the loops extend, its mask, step function). A decoder continues its input; an encoder-decoder
        (`Seq2SeqGenerationMixin`) overrides this: the prompt is the decoder start token, the input the source."""
        return input_ids, attention_mask, self.generation_steps(attention_mask)

    def default_generation_config(self) -> GenerationConfig:
        """EOS and padding ids from the model's config (what transformers' generation config derives)."""
        return GenerationConfig(eos_token_id=self.config.eos_token_id, pad_token_id=self.config.pad_token_id)

    @torch.inference_mode()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        *,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        num_beams: int | None = None,
        length_penalty: float | None = None,
        early_stopping: bool | str | None = None,
        num_return_sequences: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        stop_strings: str | list[str] | None = None,
        tokenizer=None,
        streamer=None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Token ids (B * num_return_sequences, prompt + new): each prompt followed by its continuation, as
        `transformers.generate` returns them. Rows that stop early are filled with the pad id (EOS if
        there is none).

        input_ids (B, T), left-padded when prompts differ in length (attention_mask 1 = token, 0 = padding).
        Settings: a `GenerationConfig` and/or the same names as keywords (keywords win; see GenerationConfig).
        `stop_strings` needs `tokenizer`. `streamer`: an object with put(ids) / end() (`TextStreamer`).
        Sampling draws from `generator`, or a new one seeded with `seed`, or torch's default generator
        (then `torch.manual_seed(s)` makes it reproducible, and equal to transformers' draws).
        """
        given = {
            "max_new_tokens": max_new_tokens, "max_length": max_length, "do_sample": do_sample,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
            "repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size,
            "num_beams": num_beams, "length_penalty": length_penalty, "early_stopping": early_stopping,
            "num_return_sequences": num_return_sequences, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
            "stop_strings": [stop_strings] if isinstance(stop_strings, str) else stop_strings,
        }
        config = (generation_config or self.default_generation_config()).updated(
            **{k: v for k, v in given.items() if v is not None})
        # The weights do not change during a call: bf16 CPU weights are cast, concatenated and reordered for
        # oneDNN once per call instead of at every step (fp32 takes ATen's matmuls and prepares nothing).
        with onednn.frozen_weights():
            return self._generate(input_ids, attention_mask, config, tokenizer, streamer, generator, seed)

    def _generate(self, input_ids: Tensor, attention_mask: Tensor | None, config: GenerationConfig, tokenizer,
                  streamer, generator: torch.Generator | None, seed: int | None) -> Tensor:
        run = self._prepare(input_ids, attention_mask, config, tokenizer, generator, seed)
        prompt = run.prompt  # input_ids; an encoder-decoder's decoder start tokens
        if config.num_beams > 1:
            if streamer is not None:
                raise ValueError("generate: streaming needs num_beams=1 (beams change until the end)")
            return beam_search(run.steps, prompt, config, run.processors, run.stopping, run.fill_id, run.generator)
        if streamer is not None:
            streamer.put(prompt.cpu())
        new = []
        for tokens in sample_steps(run.steps, prompt, config, run.processors, run.stopping, run.pad_id,
                                   run.generator):
            new.append(tokens)
            if streamer is not None:
                streamer.put(tokens.cpu())
        if streamer is not None:
            streamer.end()
        return torch.cat([prompt, torch.stack(new, dim=1)], dim=1)

    def generate_stream(self, input_ids: Tensor, tokenizer, generation_config: GenerationConfig | None = None,
                        generator: torch.Generator | None = None, seed: int | None = None,
                        skip_special_tokens: bool = True) -> Iterator[str]:
        """Yield the text of one prompt's continuation (input_ids (1, T)) as it is generated, whole characters
        only (see `streaming.IncrementalDecoder`). Greedy or sampled; settings as in `generate`."""
        config = generation_config or self.default_generation_config()
        if input_ids.size(0) != 1 or config.num_beams != 1:
            raise ValueError("generate_stream: one prompt (input_ids of shape (1, T)) and num_beams=1")
        decoder = IncrementalDecoder(tokenizer, skip_special_tokens)
        run = self._prepare(input_ids, None, config, tokenizer, generator, seed)
        loop = sample_steps(run.steps, run.prompt, config, run.processors, run.stopping, run.pad_id, run.generator)
        prepared = {}  # oneDNN weight preparations (bf16), made at the first step and reused by the others
        while True:
            # Inference mode and frozen weights only while the loop runs: a `with` around the yields would leak
            # them to the caller.
            with torch.inference_mode(), onednn.frozen_weights(prepared):
                tokens = next(loop, None)
            if tokens is None:
                break
            piece = decoder.add(tokens.tolist())
            if piece:
                yield piece
        rest = decoder.flush()
        if rest:
            yield rest

    def _prepare(self, input_ids: Tensor, attention_mask: Tensor | None, config: GenerationConfig, tokenizer,
                 generator: torch.Generator | None, seed: int | None) -> _Run:
        """Check everything before the first forward pass; build processors, stopping rules, step function."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32) or input_ids.size(1) == 0:
            raise ValueError(f"generate: input_ids must be a non-empty (batch, length) integer tensor, got "
                             f"{tuple(input_ids.shape)} {input_ids.dtype}")
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif tuple(attention_mask.shape) != (B, T):
            raise ValueError(f"generate: attention_mask has shape {tuple(attention_mask.shape)}, input_ids {(B, T)}")
        input_ids, attention_mask, steps = self.generation_setup(input_ids, attention_mask)  # the prompt to extend
        T = input_ids.size(1)
        config.validate(T, getattr(self.config, "max_position_embeddings", None))
        if B > 1 and not bool(attention_mask[:, -1].all()):
            logger.warning("generate: a prompt ends with padding (right padding); pad prompts on the left "
                           "(tokenizer.padding_side = 'left') or the continuation follows the padding")
        if config.do_sample and generator is None and seed is not None:
            generator = torch.Generator(input_ids.device).manual_seed(seed)
        eos = config.eos_ids
        pad_id = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
        # transformers fills the unused tail of shorter beam hypotheses with `pad or eos[0]` (a pad id of 0
        # counts as missing there); without EOS every hypothesis runs to the length limit and nothing is filled.
        fill_id = (config.pad_token_id or eos[0]) if eos else pad_id
        first_real = attention_mask.to(torch.int32).argmax(1).repeat_interleave(config.num_beams)  # (B * K,)
        stop = StopStrings(tokenizer, config.stop_strings, T) if config.stop_strings else None
        stopping = Stopping(eos, stop, T + config.new_tokens(T), input_ids.device)
        processors = build_processors(config, first_real, stopping.max_length)
        return _Run(input_ids, steps, processors, stopping, pad_id, fill_id, generator)


class Seq2SeqGenerationMixin(GenerationMixin):
    """`generate` for encoder-decoders (BART, Marian, T5): the input (the source, padded on either side) is
    encoded once; the loops extend the decoder start token, and the returned ids are the decoder's, from that
    token on, as transformers returns them. The host has `get_encoder()` and config.decoder_start_token_id."""

    def generation_setup(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Seq2SeqSteps]:
        start = self.config.decoder_start_token_id
        if start is None:
            raise ValueError("generate: config.decoder_start_token_id is not set: the decoder needs a first token "
                             "(T5 uses the pad id, 0)")
        prompt = input_ids.new_full((input_ids.size(0), 1), start)  # (B, 1)
        return prompt, torch.ones_like(prompt), Seq2SeqSteps(self, input_ids, attention_mask)


class _Run:
    """What one generate call prepared."""

    def __init__(self, prompt: Tensor, steps, processors, stopping, pad_id: int, fill_id: int, generator):
        self.prompt = prompt  # (B, T): what the loops extend (the input; an encoder-decoder's start tokens)
        self.steps, self.processors, self.stopping = steps, processors, stopping
        self.pad_id, self.fill_id, self.generator = pad_id, fill_id, generator

