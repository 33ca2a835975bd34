"""ONNX export (`lmforge export onnx MODEL OUT`): graphs of the readable modules, checked with onnxruntime.

What is exported, by the kind of model (`model_kind`):
- "encoder" (BERT / ELECTRA heads: masked-LM, pretraining, sequence / token classification, ...): `model.onnx`,
  (input_ids, attention_mask, token_type_ids) (B, T) int64 -> the head's outputs (`logits`, ...).
- "sentence-embedding" (a bare BertModel / ElectraModel, e.g. all-MiniLM-L6-v2): the same inputs ->
  `last_hidden_state` (B, T, C), [`pooler_output` (B, C)], `sentence_embedding` (B, C), pooled and normalised as
  the folder's sentence-transformers files say (`pipelines.sentence_embedding.read_pooling`).
- "causal-lm" (GPT-2, Llama, Qwen2): `model.onnx`, input_ids (B, T), attention_mask (B, P + T), and per layer i
  `past_key_values.{i}.key` / `.value` (B, Hk, P, D) -> `logits` (B, T, V), `present.{i}.key` / `.value`
  (B, Hk, P + T, D). Prefill: P = 0 (empty past); each decode step feeds the presents back as the past.
- "seq2seq-lm" (BART, Marian, T5): `encoder.onnx`, (input_ids, attention_mask) (B, S) -> `encoder_hidden_states`
  (B, S, C) and the cross-attention keys/values of every decoder layer `cross.{i}.key` / `.value` (B, Hk, S, D),
  computed once per source; `decoder.onnx`, decoder_input_ids (B, T), encoder_attention_mask (B, S),
  `past_key_values.{i}.key` / `.value` (B, Hk, P, D) and `cross.{i}.key` / `.value` -> `logits` (B, T, V),
  `present.{i}.key` / `.value` (B, Hk, P + T, D).
Batch and every length are dynamic axes.

How: `torch.onnx.export(..., dynamo=True)` (torch.export, then onnxscript's translation). The TorchScript
exporter traces one example and bakes its Python-level shape arithmetic and branches in (a decoder's mask and
cache length would be fixed to the example's); torch.export keeps lengths symbolic and refuses, instead of
silently specialising, anything it cannot keep general. While it traces, `torch.compiler.is_exporting()` makes
the masks always spelled out (`nn.attention.has_padding`). The model exported is a shallow copy of the caller's
(`pipelines.base.shared_view`: weights shared, the caller's model untouched) with the CPU fast paths swapped back
to the readable blocks (`cpu.fast_paths.restore`: no oneDNN calls in a graph) and encoders on the padded "sdpa"
path (the unpadded one drops padding with data-dependent shapes). Consequently per-token outputs at padding
positions are transformers' values, not the zeros of lmforge's unpadded default; real tokens agree.

`verify_onnx` runs the graphs with onnxruntime on inputs of other shapes than the export's example (another
batch size and length, padding; decoders: a prefill from an empty past, then a decode step) and returns the
largest |onnxruntime - lmforge| of the outputs at real tokens, against the caller's model run eagerly.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..auto import MODEL_CLASSES, AutoConfig
from ..cpu import fast_paths
from ..models.config import read_config_json
from ..nn.attention import CrossAttention, KVCache
from ..pipelines.base import shared_view
from ..pipelines.sentence_embedding import POOLING_MODES, pool_embeddings, read_pooling

ENCODER_FAMILIES = ("bert", "electra")
DECODER_FAMILIES = ("gpt2", "llama", "qwen2")
SEQ2SEQ_FAMILIES = ("bart", "marian", "t5")
# (families, registry task) -> kind; anything else is refused with this table in the message.
KINDS = {
    **{(family, "base"): "sentence-embedding" for family in ENCODER_FAMILIES},
    **{(family, task): "encoder" for family in ENCODER_FAMILIES
       for task in ("masked-lm", "pretraining", "next-sentence", "sequence-classification", "token-classification",
                    "question-answering")},
    **{(family, "causal-lm"): "causal-lm" for family in DECODER_FAMILIES},
    **{(family, "seq2seq-lm"): "seq2seq-lm" for family in SEQ2SEQ_FAMILIES},
}
# Weight files are not copied next to the graphs (the graphs hold the weights); everything else in the folder is.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx", ".data")
# The export's example: batch 2, lengths 5 (new tokens), 3 (past), 7 (source). Distinct sizes, none 0 or 1:
# torch.export gives equal example sizes one symbol and specialises sizes 0 and 1.
EXAMPLE_BATCH, EXAMPLE_LENGTH, EXAMPLE_PAST, EXAMPLE_SOURCE = 2, 5, 3, 7
PROTOBUF_LIMIT = 2**31 - 2**26  # bytes of weights an .onnx file can hold (2 GB, less room for the graph)


class MissingExtraError(ImportError):
    """onnx, onnxruntime or onnxscript is not installed (the `onnx` extra)."""


def import_onnx_runtime():
    """(onnx, onnxruntime), with onnxscript (torch's dynamo exporter imports it) checked too; or an error naming
    the extra to install."""
    try:
        importlib.import_module("onnxscript")
        return importlib.import_module("onnx"), importlib.import_module("onnxruntime")
    except ImportError as error:
        raise MissingExtraError(f"ONNX export needs onnx, onnxruntime and onnxscript ({error}); install them with "
                                "`pip install 'lmforge[onnx]'`") from error


# ---------------------------------------------------------------------------------------------- kinds and loading
def model_kind(model: nn.Module) -> str:
    """"encoder", "sentence-embedding", "causal-lm" or "seq2seq-lm"; ValueError for a model that has none."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    tasks = MODEL_CLASSES.get(model_type, {})
    task = next((task for task, cls in tasks.items() if cls is type(model)), None)
    kind = KINDS.get((model_type, task))
    if kind is None:
        supported = sorted({f"{family} {task}" for family, task in KINDS})
        raise ValueError(f"cannot export {type(model).__name__} (model_type {model_type!r}) to ONNX; supported "
                         f"(model_type task): {', '.join(supported)}")
    return kind


def load_for_export(folder: str | Path) -> nn.Module:
    """The model class the folder's config.json names (its first architecture; the base model without one)."""
    config = AutoConfig.from_pretrained(folder)
    data, file = read_config_json(folder)
    architectures = data.get("architectures") or []
    tasks = MODEL_CLASSES[config.model_type]
    classes = {cls.__name__: cls for cls in tasks.values()}
    if not architectures:
        cls = tasks["base"]
    elif architectures[0] in classes:
        cls = classes[architectures[0]]
    else:
        raise ValueError(f"{file}: architecture {architectures[0]!r} is not a {config.model_type} model lmforge "
                         f"has; known: {sorted(classes)}")
    return cls.from_pretrained(folder, config=config)


def readable_copy(model: nn.Module) -> nn.Module:
    """The caller's model as a graph sees it: a shallow copy (weights shared) in eval mode, the CPU fast paths
    swapped back to the readable blocks, encoders on padded batches."""
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError(f"ONNX export takes an fp32 model, got {next(model.parameters()).dtype}; load it in fp32")
    view = fast_paths.restore(shared_view(model)).eval()
    view.set_attn_implementation("sdpa")
    return view


# ---------------------------------------------------------------------------------------------- graph modules
class EncoderGraph(nn.Module):
    """(input_ids, attention_mask, token_type_ids) (B, T) -> the output fields `names` of the model's output."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> tuple[Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(getattr(out, name) for name in self.names)


class SentenceEmbeddingGraph(EncoderGraph):
    """A bare encoder's outputs plus `sentence_embedding` (B, C): pooled over real tokens, normalised or not."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], pooling: str, normalize: bool):
        super().__init__(model, names)
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.pooling, self.normalize = pooling, normalize

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> tuple[Tensor, ...]:
        outputs = super().forward(input_ids, attention_mask, token_type_ids)
        embedding = pool_embeddings(outputs[0], attention_mask, self.pooling, self.normalize)  # (B, C)
        return (*outputs, embedding)


class TensorKVCache(KVCache):
    """A cache given as tensors, as a graph receives its past: `update` concatenates (no preallocated buffer
    to grow, which would be shape-dependent control flow), so the graph returns each layer's whole keys/values."""

    def __init__(self, keys: list[Tensor], values: list[Tensor], cross: list[tuple[Tensor, Tensor]] | None = None):
        super().__init__(len(keys))
        self._keys, self._values = list(keys), list(values)
        self._lengths = [k.size(2) for k in keys]
        if cross is not None:
            self.cross = list(cross)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self._keys[layer] = torch.cat([self._keys[layer], k], dim=2)  # (B, Hk, P + T, D)
        self._values[layer] = torch.cat([self._values[layer], v], dim=2)
        self._lengths[layer] += k.size(2)
        return self._keys[layer], self._values[layer]

    def flat(self) -> tuple[Tensor, ...]:
        """(key 0, value 0, key 1, value 1, ...): the graph's `present.*` outputs."""
        return tuple(t for pair in zip(self._keys, self._values) for t in pair)


class CausalLMGraph(nn.Module):
    """input_ids (B, T), attention_mask (B, P + T), past (key 0, value 0, ...) each (B, Hk, P, D)
    -> logits (B, T, V), present (key 0, value 0, ...) each (B, Hk, P + T, D)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, past: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        cache = TensorKVCache(list(past[0::2]), list(past[1::2]))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache)
        return (out.logits, *cache.flat())


class Seq2SeqEncoderGraph(nn.Module):
    """input_ids, attention_mask (B, S) -> encoder_hidden_states (B, S, C), cross (key 0, value 0, ...) each
    (B, Hk, S, D): the keys/values of every decoder layer's cross-attention, computed once per source."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.cross_attentions = cross_attentions(model)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        states = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        cross = tuple(t for attention in self.cross_attentions for t in attention.keys_values(states))
        return (states, *cross)


class Seq2SeqDecoderGraph(nn.Module):
    """decoder_input_ids (B, T), encoder_attention_mask (B, S), past (key 0, value 0, ...) each (B, Hk, P, D),
    cross (key 0, value 0, ...) each (B, Hk, S, D) -> logits (B, T, V), present (B, Hk, P + T, D) per layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids: Tensor, encoder_attention_mask: Tensor, past: tuple[Tensor, ...],
                cross: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        cache = TensorKVCache(list(past[0::2]), list(past[1::2]), list(zip(cross[0::2], cross[1::2])))
        # The encoder output itself is not needed: the cache holds its cross-attention keys/values.
        out = self.model(attention_mask=encoder_attention_mask, decoder_input_ids=decoder_input_ids,
                         encoder_outputs=(None,), past_key_values=cache)
        return (out.logits, *cache.flat())


def cross_attentions(model: nn.Module) -> list[nn.Module]:
    """The decoder's cross-attention modules, in layer order."""
    found = [m for m in model.get_decoder().modules() if isinstance(m, CrossAttention)]
    return sorted(found, key=lambda m: m.layer_idx)


# ---------------------------------------------------------------------------------------------- examples
def _ids(generator: torch.Generator, vocab_size: int, B: int, T: int) -> Tensor:
    return torch.randint(0, vocab_size, (B, T), generator=generator)  # (B, T)


def padded_mask(lengths: list[int], T: int, left: bool) -> Tensor:
    """(B, T) int64: 1 at each row's `lengths[b]` real tokens, right- or left-aligned."""
    positions = torch.arange(T)[None, :]  # (1, T)
    lengths_ = torch.tensor(lengths)[:, None]  # (B, 1)
    mask = positions >= T - lengths_ if left else positions < lengths_
    return mask.long()  # (B, T)


def _vocab_size(model: nn.Module) -> int:
    return model.config.vocab_size


def _target_vocab_size(model: nn.Module) -> int:
    """The decoder's vocabulary (Marian's may differ from the source's)."""
    return getattr(model.config, "target_vocab_size", model.config.vocab_size)


def encoder_inputs(model: nn.Module, B: int, T: int, lengths: list[int], seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    type_vocab = getattr(model.config, "type_vocab_size", 1)
    return {
        "input_ids": _ids(generator, _vocab_size(model), B, T),
        "attention_mask": padded_mask(lengths, T, left=False),
        "token_type_ids": torch.randint(0, type_vocab, (B, T), generator=generator),
    }


def decoder_past(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
    """The keys/values an eager prefill of `input_ids` caches: (key 0, value 0, ...) each (B, Hk, P, D)."""
    with torch.no_grad():
        cache = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True).past_key_values
    return tuple(t.clone() for i in range(len(cache)) for t in cache.layer(i))


# ---------------------------------------------------------------------------------------------- export
def _export(graph: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes: tuple) -> None:
    """torch.onnx.export with the dynamo exporter. Weights go inside the file, or, past protobuf's 2 GB limit, into
    `<file>.data` next to it (ONNX's external data; onnxruntime finds it by the relative name)."""
    external = sum(p.numel() * p.element_size() for p in graph.parameters()) > PROTOBUF_LIMIT
    graph.eval()  # the wrapper's own mode (the model inside is already in eval)
    with torch.no_grad(), warnings.catch_warnings():
        # Axes named alike (every input's "batch") are one axis: torch.onnx says so once per input.
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(graph, args, dynamo=True, input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic_shapes, external_data=external, optimize=True, verbose=False)
    program.save(str(path), external_data=external)


def _per_layer(prefix: str, n: int) -> list[str]:
    return [f"{prefix}.{i}.{part}" for i in range(n) for part in ("key", "value")]


# Dynamic axes, by the names the ONNX graph gives them (strings: torch.onnx makes each a Dim.DYNAMIC and names
# the graph's axis after it).
TOKENS = {0: "batch", 1: "sequence"}
SOURCE = {0: "batch", 1: "source_sequence"}
PAST = {0: "batch", 2: "past_sequence"}
CROSS = {0: "batch", 2: "source_sequence"}
PAST_AND_TOKENS = {0: "batch", 1: "past_sequence + sequence"}


def export_encoder(model: nn.Module, out: Path, pooling: str = "mean", normalize: bool = False) -> list[Path]:
    view = readable_copy(model)
    args = tuple(encoder_inputs(view, EXAMPLE_BATCH, EXAMPLE_LENGTH, [EXAMPLE_LENGTH, EXAMPLE_LENGTH - 2], 0).values())
    with torch.no_grad():
        example = view(*args[:2], token_type_ids=args[2])
    names = tuple(f.name for f in dataclasses.fields(example)
                  if f.name != "loss" and isinstance(getattr(example, f.name), Tensor))
    if model_kind(model) == "sentence-embedding":
        graph, output_names = SentenceEmbeddingGraph(view, names, pooling, normalize), [*names, "sentence_embedding"]
    else:
        graph, output_names = EncoderGraph(view, names), list(names)
    path = out / "model.onnx"
    _export(graph, args, path, ["input_ids", "attention_mask", "token_type_ids"], output_names,
            (TOKENS, TOKENS, TOKENS))
    return [path]


def export_causal_lm(model: nn.Module, out: Path) -> list[Path]:
    view = readable_copy(model)
    generator = torch.Generator().manual_seed(0)
    B, T, P = EXAMPLE_BATCH, EXAMPLE_LENGTH, EXAMPLE_PAST
    prompt = _ids(generator, _vocab_size(view), B, P)
    mask = padded_mask([P + T, P + T - 2], P + T, left=True)  # (B, P + T)
    past = decoder_past(view, prompt, mask[:, :P])
    args = (_ids(generator, _vocab_size(view), B, T), mask, past)
    n = len(past) // 2
    path = out / "model.onnx"
    _export(CausalLMGraph(view), args, path, ["input_ids", "attention_mask", *_per_layer("past_key_values", n)],
            ["logits", *_per_layer("present", n)], (TOKENS, PAST_AND_TOKENS, tuple(PAST for _ in past)))
    return [path]


def export_seq2seq(model: nn.Module, out: Path) -> list[Path]:
    view = readable_copy(model)
    generator = torch.Generator().manual_seed(0)
    B, T, P, S = EXAMPLE_BATCH, EXAMPLE_LENGTH, EXAMPLE_PAST, EXAMPLE_SOURCE
    source = _ids(generator, _vocab_size(view), B, S)
    source_mask = padded_mask([S, S - 2], S, left=False)
    encoder_graph = Seq2SeqEncoderGraph(view)
    n = len(encoder_graph.cross_attentions)
    encoder_path, decoder_path = out / "encoder.onnx", out / "decoder.onnx"
    _export(encoder_graph, (source, source_mask), encoder_path, ["input_ids", "attention_mask"],
            ["encoder_hidden_states", *_per_layer("cross", n)], (SOURCE, SOURCE))
    with torch.no_grad():
        states, *cross = encoder_graph(source, source_mask)
        start = _ids(generator, _target_vocab_size(view), B, P)
        cache = view(attention_mask=source_mask, decoder_input_ids=start, encoder_outputs=(states,),
                     use_cache=True).past_key_values
    past = tuple(t.clone() for i in range(n) for t in cache.layer(i))
    args = (_ids(generator, _target_vocab_size(view), B, T), source_mask, past, tuple(cross))
    _export(Seq2SeqDecoderGraph(view), args, decoder_path,
            ["decoder_input_ids", "encoder_attention_mask", *_per_layer("past_key_values", n), *_per_layer("cross", n)],
            ["logits", *_per_layer("present", n)],
            (TOKENS, SOURCE, tuple(PAST for _ in past), tuple(CROSS for _ in cross)))
    return [encoder_path, decoder_path]


def export_onnx(model: nn.Module, out: str | Path, pooling: str = "mean", normalize: bool = False) -> list[Path]:
    """Write the ONNX graphs of `model` (see the module docstring) into the folder `out`; returns their paths.
    `pooling` / `normalize`: the sentence embedding of a bare encoder. The caller's model is not changed."""
    import_onnx_runtime()
    kind = model_kind(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "causal-lm":
        return export_causal_lm(model, out)
    if kind == "seq2seq-lm":
        return export_seq2seq(model, out)
    return export_encoder(model, out, pooling, normalize)


def copy_folder_files(folder: str | Path, out: str | Path) -> None:
    """Config, tokenizer and sentence-transformers files of `folder` next to the graphs (weights excluded)."""
    folder, out = Path(folder), Path(out)
    for item in folder.iterdir():
        if item.name.startswith(".") or item.suffix in WEIGHT_SUFFIXES:
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, out / item.name)


# ---------------------------------------------------------------------------------------------- verification
def _session(path: Path):
    _, ort = import_onnx_runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, {k: v.numpy() for k, v in feeds.items()})
    return {name: torch.from_numpy(value) for name, value in zip(names, results)}


def masked_max_diff(a: Tensor, b: Tensor, mask: Tensor | None) -> float:
    """max |a - b|, over the real tokens when `mask` (B, T) is given and a is per token (B, T, ...)."""
    diff = (a.float() - b.float()).abs()
    if mask is not None and diff.dim() >= 2 and diff.shape[:2] == mask.shape:
        diff = diff[mask.bool()]
    return float(diff.max()) if diff.numel() else 0.0


def _empty_past(session, B: int, prefix: str) -> dict[str, Tensor]:
    """Zero-length past for every `prefix.*` input: (B, Hk, 0, D), Hk and D read from the graph."""
    return {i.name: torch.zeros(B, i.shape[1], 0, i.shape[3]) for i in session.get_inputs() if i.name.startswith(prefix)}


def verify_onnx(model: nn.Module, out: str | Path, pooling: str = "mean", normalize: bool = False,
                seed: int = 1) -> float:
    """Largest |onnxruntime - lmforge| over the graphs' outputs at real tokens, on inputs of other shapes than the
    export's example: batch 3, padded rows, longer and shorter lengths, decoders from an empty past and one
    decode step. lmforge: the caller's model run eagerly as it is (fast paths and attention mode included)."""
    kind = model_kind(model)
    out = Path(out)
    with torch.no_grad():
        if kind == "causal-lm":
            return _verify_causal_lm(model, out, seed)
        if kind == "seq2seq-lm":
            return _verify_seq2seq(model, out, seed)
        return _verify_encoder(model, out, kind, pooling, normalize, seed)


def _verify_encoder(model, out, kind, pooling, normalize, seed) -> float:
    B, T = 3, 11
    inputs = encoder_inputs(model, B, T, [T, 4, 8], seed)
    got = _run(_session(out / "model.onnx"), inputs)
    expected = model(**inputs)
    worst = 0.0
    for name, value in got.items():
        if name == "sentence_embedding":
            reference = pool_embeddings(expected.last_hidden_state, inputs["attention_mask"], pooling, normalize)
        else:
            reference = getattr(expected, name)
        worst = max(worst, masked_max_diff(value, reference, inputs["attention_mask"]))
    return worst


def _verify_causal_lm(model, out, seed) -> float:
    session = _session(out / "model.onnx")
    generator = torch.Generator().manual_seed(seed)
    B, T = 3, 9
    ids = _ids(generator, _vocab_size(model), B, T)
    mask = padded_mask([T, 6, 2], T, left=True)  # left padding, as for generation
    step_ids = _ids(generator, _vocab_size(model), B, 1)
    step_mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)  # (B, T + 1)

    eager = model(input_ids=ids, attention_mask=mask, use_cache=True)
    eager_step = model(input_ids=step_ids, attention_mask=step_mask, past_key_values=eager.past_key_values)
    prefill = _run(session, {"input_ids": ids, "attention_mask": mask, **_empty_past(session, B, "past_key_values")})
    n = sum(name.startswith("present.") for name in prefill) // 2
    past = dict(zip(_per_layer("past_key_values", n), (prefill[name] for name in _per_layer("present", n))))
    step = _run(session, {"input_ids": step_ids, "attention_mask": step_mask, **past})
    return max(masked_max_diff(prefill["logits"], eager.logits, mask), masked_max_diff(step["logits"], eager_step.logits, None))


def _verify_seq2seq(model, out, seed) -> float:
    encoder, decoder = _session(out / "encoder.onnx"), _session(out / "decoder.onnx")
    generator = torch.Generator().manual_seed(seed)
    B, S, T = 3, 10, 4
    source = _ids(generator, _vocab_size(model), B, S)
    source_mask = padded_mask([S, 5, 8], S, left=False)
    decoder_ids = _ids(generator, _target_vocab_size(model), B, T)
    step_ids = _ids(generator, _target_vocab_size(model), B, 1)

    states = model.get_encoder()(input_ids=source, attention_mask=source_mask).last_hidden_state
    eager = model(attention_mask=source_mask, decoder_input_ids=decoder_ids, encoder_outputs=(states,), use_cache=True)
    eager_step = model(attention_mask=source_mask, decoder_input_ids=step_ids, encoder_outputs=(states,),
                       past_key_values=eager.past_key_values)
    encoded = _run(encoder, {"input_ids": source, "attention_mask": source_mask})
    cross = {name: value for name, value in encoded.items() if name.startswith("cross.")}
    feeds = {"decoder_input_ids": decoder_ids, "encoder_attention_mask": source_mask, **cross}
    prefill = _run(decoder, {**feeds, **_empty_past(decoder, B, "past_key_values")})
    n = len(cross) // 2
    past = dict(zip(_per_layer("past_key_values", n), (prefill[name] for name in _per_layer("present", n))))
    step = _run(decoder, {**feeds, "decoder_input_ids": step_ids, **past})
    return max(masked_max_diff(encoded["encoder_hidden_states"], states, source_mask),
               masked_max_diff(prefill["logits"], eager.logits, None), masked_max_diff(step["logits"], eager_step.logits, None))


def export_folder(folder: str | Path, out: str | Path, verify: bool = True) -> tuple[list[Path], float | None]:
    """`lmforge export onnx`: load the folder's model, export it into `out` with the folder's other files
    (config, tokenizer, pooling settings), and verify it unless `verify=False`. Returns (graphs, max diff)."""
    import_onnx_runtime()
    model = load_for_export(folder)
    pooling, normalize = read_pooling(folder)
    paths = export_onnx(model, out, pooling, normalize)
    copy_folder_files(folder, out)
    return paths, (verify_onnx(model, out, pooling, normalize) if verify else None)
