"""Tokenizer training: WordPiece (BERT), byte-level BPE (BERT's special tokens), GPT-2-style byte-level BPE
(causal LMs) or SentencePiece-style Unigram (encoder-decoders) from a stream of texts, deterministic across
processes (see `_train_wordpiece_vocab` and `_train_unigram`)."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE, Unigram

from .loading import build_bert_backend
from .templates import (
    GPT2_STYLE_SPECIAL_TOKENS,
    SEQ2SEQ_SPECIAL_TOKENS,
    TEMPLATES,
    TRAINED_SPECIAL_TOKENS,
    bert_normalizer,
    bert_template,
)
from .tokenizer import DEFAULT_MODEL_MAX_LENGTH, Tokenizer

# CJK ideograph blocks, the same ranges BERT's `_is_chinese_char` (and BertNormalizer) uses.
_CJK_PATTERN = (
    "[\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f]"
)


KINDS = ("wordpiece", "bpe", "gpt2", "unigram")


def train_tokenizer(
    texts: Iterable[str],
    output_dir: str | os.PathLike[str],
    *,
    kind: str = "wordpiece",
    vocab_size: int = 30522,
    min_frequency: int = 2,
    lowercase: bool | None = None,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    length: int | None = None,
    show_progress: bool = False,
    extra_ids: int = 0,
) -> Tokenizer:
    """Train a WordPiece (BERT), byte-level BPE (BERT) or GPT-2-style byte-level BPE tokenizer on a stream of
    texts, save it, return it.

    `texts` is consumed once, lazily (never materialised); `length` (or `len(texts)` when it has one)
    only feeds the progress bar. "wordpiece" and "bpe" reserve ids 0-4 for `[PAD] [UNK] [CLS] [SEP] [MASK]` and
    use BERT's `[CLS] A [SEP] B [SEP]` template. "gpt2" is for causal LMs, as GPT-2's: `<|endoftext|>` (id 0) is
    the BOS, EOS and UNK token, `<|pad|>` (id 1) the padding token, and texts are encoded as they are (no
    template). `lowercase=None` lowercases for "wordpiece" and "bpe" (BERT's uncased default), not for "gpt2".
    `strip_accents=None` follows `lowercase`. `tokenize_chinese_chars` makes every CJK ideograph its own word
    (so it becomes a single token).

    "unigram" is for encoder-decoders (BART, Marian, T5), as SentencePiece's: NFKC, whitespace kept as `▁`
    (Metaspace), no lowercasing by default, ids 0-4 `<pad> </s> <unk> <s> <mask>`, every text encoded as
    `$A </s>`; `extra_ids` > 0 appends T5's sentinels `<extra_id_0>` .. `<extra_id_{n-1}>` as special tokens,
    in T5's order (`<extra_id_0>` gets the highest id). CJK texts need no spaces: Unigram segments them.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if extra_ids and kind != "unigram":
        raise ValueError("extra_ids (T5's sentinel tokens) needs kind='unigram'")
    if kind == "unigram":
        return _train_unigram(texts, output_dir, vocab_size=vocab_size, lowercase=bool(lowercase),
                              model_max_length=model_max_length, extra_ids=extra_ids, show_progress=show_progress,
                              length=length if length is not None or not hasattr(texts, "__len__")
                              else len(texts))  # type: ignore[arg-type]
    special = list(GPT2_STYLE_SPECIAL_TOKENS if kind == "gpt2" else TRAINED_SPECIAL_TOKENS)
    if vocab_size <= len(special):
        raise ValueError(f"vocab_size must exceed the {len(special)} special tokens, got {vocab_size}")
    if lowercase is None:
        lowercase = kind not in ("gpt2", "unigram")

    if length is None and hasattr(texts, "__len__"):
        length = len(texts)  # type: ignore[arg-type]
    backend: BackendTokenizer
    if kind == "wordpiece":
        pad, unk, cls_token, sep, mask = special
        normalizer = bert_normalizer(lowercase, strip_accents, tokenize_chinese_chars)
        vocab = _train_wordpiece_vocab(_iter_texts(texts), normalizer, vocab_size=vocab_size,
                                       min_frequency=min_frequency, special=special, show_progress=show_progress,
                                       length=length)
        config = {"do_lower_case": lowercase, "strip_accents": strip_accents,
                  "tokenize_chinese_chars": tokenize_chinese_chars}
        backend = build_bert_backend(vocab, config, {"unk_token": unk, "sep_token": sep, "pad_token": pad,
                                                      "cls_token": cls_token, "mask_token": mask})
    else:
        backend = _train_byte_level_bpe(texts, special, vocab_size=vocab_size, min_frequency=min_frequency,
                                        lowercase=lowercase, strip_accents=strip_accents,
                                        tokenize_chinese_chars=tokenize_chinese_chars, show_progress=show_progress,
                                        length=length)

    ids = [backend.token_to_id(t) for t in special]
    if ids != list(range(len(special))):
        raise RuntimeError(f"special tokens did not get ids 0-{len(special) - 1} after training: "
                           f"{dict(zip(special, ids))}")
    if kind == "gpt2":
        return _save_gpt2_style(backend, special, output_dir, model_max_length)

    pad, unk, cls_token, sep, mask = special
    template = bert_template(cls_token, sep, ids[2], ids[3])
    if kind == "bpe":
        # ByteLevel post-processing trims the leading-space byte from offsets; the template adds BERT's
        # special tokens.
        backend.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=True), template])
    else:
        backend.post_processor = template

    tokenizer = Tokenizer(
        backend,
        special_tokens={"unk_token": unk, "sep_token": sep, "pad_token": pad, "cls_token": cls_token,
                        "mask_token": mask},
        model_max_length=model_max_length,
        # WordPiece's decoder already joins "##" pieces; transformers' extra clean-up would change text.
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(output_dir)
    # Reload so the returned object is exactly what later runs (and transformers) will see.
    return Tokenizer.from_pretrained(output_dir)


def _train_byte_level_bpe(
    texts: Iterable[str], special: list[str], *, vocab_size: int, min_frequency: int, lowercase: bool,
    strip_accents: bool | None, tokenize_chinese_chars: bool, show_progress: bool, length: int | None,
) -> BackendTokenizer:
    # Byte-level BPE never needs an unknown token (every byte is in the alphabet). Every symbol is in the
    # trainer's alphabet from the start (the 256 byte characters, sorted), so its tie-breaking by symbol id is
    # the same in every process (see _train_wordpiece_vocab for the case where it is not).
    backend = BackendTokenizer(BPE())
    steps: list[normalizers.Normalizer] = []
    if strip_accents or (strip_accents is None and lowercase):
        # NFC afterwards recomposes what StripAccents leaves decomposed (e.g. Hangul).
        steps += [normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if steps:
        backend.normalizer = normalizers.Sequence(steps)
    # Isolating CJK ideographs keeps each one a single token without inserting spaces, so
    # decoding stays an exact round trip (BertNormalizer's padding spaces would show up in BPE).
    pre: list[pre_tokenizers.PreTokenizer] = []
    if tokenize_chinese_chars:
        pre.append(pre_tokenizers.Split(Regex(_CJK_PATTERN), behavior="isolated"))
    pre.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(pre)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
    backend.train_from_iterator(_iter_texts(texts), trainer=trainer, length=length)
    return backend


def _save_gpt2_style(
    backend: BackendTokenizer, special: list[str], output_dir: str | os.PathLike[str], model_max_length: int
) -> Tokenizer:
    """GPT-2's layout: no template (ByteLevel post-processing only trims offsets), decoder inputs."""
    end_of_text, pad = special
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    tokenizer = Tokenizer(
        backend,
        special_tokens={"bos_token": end_of_text, "eos_token": end_of_text, "unk_token": end_of_text,
                        "pad_token": pad},
        model_max_length=model_max_length,
        model_input_names=TEMPLATES["gpt2"].model_input_names,
    )
    tokenizer.save_pretrained(output_dir)
    return Tokenizer.from_pretrained(output_dir)


def _train_unigram(
    texts: Iterable[str], output_dir: str | os.PathLike[str], *, vocab_size: int, lowercase: bool,
    model_max_length: int, extra_ids: int, show_progress: bool, length: int | None,
) -> Tokenizer:
    """SentencePiece-style Unigram (Kudo 2018) with Marian's / T5's pipeline: NFKC, `▁` for whitespace, `$A </s>`.

    `tokenizers`' UnigramTrainer learns the same pieces in every process but orders pieces of equal score by
    hash-map order and sums scores in varying order (they differ in the last bits), so ids change from run to
    run. The learned pieces are re-sorted here by score rounded to 1e-8, then by the piece, after the specials.
    """
    special = list(SEQ2SEQ_SPECIAL_TOKENS)
    if vocab_size <= len(special):
        raise ValueError(f"vocab_size must exceed the {len(special)} special tokens, got {vocab_size}")
    pad, eos, unk, bos, mask = special
    learner = BackendTokenizer(Unigram())
    steps: list[normalizers.Normalizer] = [normalizers.NFKC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    learner.normalizer = normalizers.Sequence(steps)
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    learner.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token=unk,
                                      show_progress=show_progress)
    learner.train_from_iterator(_iter_texts(texts), trainer=trainer, length=length)

    pieces = [(str(piece), float(score)) for piece, score in json.loads(learner.to_str())["model"]["vocab"]]
    if [p for p, _ in pieces[: len(special)]] != special:
        raise RuntimeError(f"special tokens did not get ids 0-{len(special) - 1} after training")
    learned = sorted(((p, round(s, 8)) for p, s in pieces[len(special):]), key=lambda ps: (-ps[1], ps[0]))
    # The trainer appends the characters it must cover but did not keep with scores that step down by 1e-4, in
    # hash order: give that run's scores to its characters in code-point order instead.
    first = len(learned) - 1  # where that run starts
    while (first >= 1 and len(learned[first - 1][0]) == len(learned[first][0]) == 1
           and abs(learned[first - 1][1] - learned[first][1] - 1e-4) < 1e-7):
        first -= 1
    learned[first:] = zip(sorted(p for p, _ in learned[first:]), [s for _, s in learned[first:]], strict=True)
    backend = BackendTokenizer(Unigram(pieces[: len(special)] + learned, unk_id=special.index(unk),
                                       byte_fallback=False))
    backend.normalizer, backend.pre_tokenizer, backend.decoder = learner.normalizer, learner.pre_tokenizer, \
        learner.decoder
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    # T5's layout: sentinel i is id len(vocab) - 1 - i (its span-corruption code counts down from the top).
    sentinels = [f"<extra_id_{i}>" for i in reversed(range(extra_ids))]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sentinels])
    backend.post_processor = processors.TemplateProcessing(single=f"$A:0 {eos}:0", pair=f"$A:0 {eos}:0 $B:0 {eos}:0",
                                                           special_tokens=[(eos, special.index(eos))])
    tokenizer = Tokenizer(
        backend,
        special_tokens={"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad, "mask_token": mask,
                        # BART's tokenizer names <s> / </s> as cls / sep too (the pretraining cache brackets
                        # instances with them).
                        "cls_token": bos, "sep_token": eos},
        additional_special_tokens=list(reversed(sentinels)),
        model_max_length=model_max_length,
        model_input_names=TEMPLATES["t5"].model_input_names,
    )
    tokenizer.save_pretrained(output_dir)
    return Tokenizer.from_pretrained(output_dir)


def _iter_texts(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer expects str texts, got {type(text).__name__}")
        yield text


# Stand-in characters for training (_train_wordpiece_vocab): Unicode's supplementary private-use planes.
_STAND_IN_CODES = (range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))


class _StandIns:
    """Names every character of the training words with a private-use stand-in, a different one for its
    word-initial and its continuing ("##") occurrences, numbered in order of first appearance."""

    def __init__(self) -> None:
        self._codes = itertools.chain(*_STAND_IN_CODES)
        self.initial: dict[str, str] = {}
        self.continuing: dict[str, str] = {}
        self._words: dict[str, str] = {}  # word -> its stand-in spelling (each word is spelled once)

    def _name(self, table: dict[str, str], char: str) -> str:
        if char not in table:
            code = next(self._codes, None)
            if code is None:
                raise ValueError("the corpus has more distinct characters than WordPiece training can name")
            table[char] = chr(code)
        return table[char]

    def spell(self, word: str) -> str:
        spelled = self._words.get(word)
        if spelled is None:
            spelled = self._name(self.initial, word[0]) + "".join(self._name(self.continuing, c) for c in word[1:])
            self._words[word] = spelled
        return spelled

    def restore(self, tokens: Iterable[str]) -> list[str]:
        """The WordPiece tokens that learned stand-in tokens stand for ("##" marks a continuing piece)."""
        initial = {v: k for k, v in self.initial.items()}
        continuing = {v: k for k, v in self.continuing.items()}
        restored = []
        for token in tokens:
            rest = "".join(continuing[c] for c in token[1:])  # only a word's first symbol is initial
            head = initial.get(token[0])
            restored.append(head + rest if head is not None else "##" + continuing[token[0]] + rest)
        return restored


def _train_wordpiece_vocab(
    texts: Iterator[str],
    normalizer: normalizers.Normalizer,
    *,
    vocab_size: int,
    min_frequency: int,
    special: list[str],
    show_progress: bool,
    length: int | None,
) -> dict[str, int]:
    """A WordPiece vocabulary learned as `tokenizers`' WordPieceTrainer does, but the same in every process.

    WordPieceTrainer is a BPE trainer with a "##" prefix. Among pairs of equal count it merges the one
    with the smallest symbol ids; the characters of its alphabet get ids in sorted order, but each "##c"
    gets the next free id when first met while walking the corpus's word counts, a hash map whose order
    changes from process to process (Rust's random hash seeds; neither PYTHONHASHSEED nor
    RAYON_RS_NUM_THREADS / TOKENIZERS_PARALLELISM fix it). So two runs on the same corpus tie-break
    differently and learn different vocabularies. Here every character of the normalised, BERT-split
    words is renamed to a private-use stand-in (word-initial and continuing occurrences to different ones,
    numbered in order of first appearance in the stream), and plain BPE, with no prefix, learns on those
    words: every symbol is then in the sorted alphabet before the first merge, so ids and ties are the
    same in every process. The merges are the ones WordPieceTrainer makes, up to the order of ties.
    """
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    stand_ins = _StandIns()

    def spelled_texts() -> Iterator[str]:
        for text in texts:
            words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
            yield " ".join(stand_ins.spell(word) for word, _ in words if word)

    learner = BackendTokenizer(BPE())
    learner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # stand-ins are never whitespace
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                  show_progress=show_progress)
    learner.train_from_iterator(spelled_texts(), trainer=trainer, length=length)

    learned = [t for t, _ in sorted(learner.get_vocab().items(), key=lambda item: item[1]) if t not in special]
    characters = sorted(stand_ins.restore(t for t in learned if len(t) == 1))
    merged = stand_ins.restore(t for t in learned if len(t) > 1)  # in the order learned
    # BERT's layout: special tokens, characters, "##" characters, then the merges.
    tokens = special + sorted(characters, key=lambda t: t.startswith("##")) + merged
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("WordPiece training produced the same token twice")
    return vocab
