"""BERT: embeddings, post-LN encoder, pooler and every task head, in one file.

Module attribute names equal the Hugging Face checkpoint names (`bert.encoder.layer.0.attention.
self.query.weight`, `cls.predictions.transform.dense.weight`, ...), so our own checkpoints need no
key map and HF checkpoints load directly. Shape legend: `lmforge.nn.attention`'s.

Read top-down, each class has one forward, the plain computation. The CPU fast paths (oneDNN linears
with fused GELU, one Q|K|V matmul, varlen attention on unpadded tokens, cheap dropout) replace the
`nn` blocks in place when a model is built (`lmforge.cpu.fast_paths`, called by `post_init`); they
are not written here (nor is the fused projection + loss of the sparse MLM head, `cpu.losses`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.attention import DEFAULT_ATTN_IMPLEMENTATION, ENCODER_ATTN_IMPLEMENTATIONS, EncoderSelfAttention
from ...nn.heads import IGNORE_INDEX, MaskedLMHead, mlm_logits_and_loss, sequence_classification_loss
from ...nn.mlp import DenseAct, PostNormOutput
from ...nn.packing import Packing, Padded, batch_layout
from ...outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    MultipleChoiceOutput,
    NextSentencePredictorOutput,
    PreTrainingOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from ..base import PreTrainedModel, normal_init
from .config import BertConfig
from .keys import BERT_KEY_RULES


# ---------------------------------------------------------------------------------------------- body
class BertEmbeddings(nn.Module):
    """Word + position + segment embeddings, LayerNorm, dropout. Their width is `hidden_size` in BERT and
    `embedding_size` in ELECTRA (which projects up to the hidden size after them)."""

    def __init__(self, config: BertConfig, embedding_size: int):
        super().__init__()
        E = embedding_size
        self.word_embeddings = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, E)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, E)
        self.LayerNorm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None, position_ids: Tensor | None,
                layout: Padded | Packing) -> Tensor:
        """(B, T) ids -> (B, T, E); with a `Packing` layout, only the real tokens: (N, E)."""
        B, T = input_ids.shape
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings={self.position_embeddings.num_embeddings}; "
                "truncate the input (tokenizer(..., truncation=True))"
            )
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None, :]  # (1, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(layout.unpad(input_ids)) + self.token_type_embeddings(layout.unpad(token_type_ids))
        x = x + self.position_embeddings(layout.unpad(position_ids))  # (B, T, C) or (N, C)
        return self.dropout(self.LayerNorm(x))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = EncoderSelfAttention(config.hidden_size, config.num_attention_heads,
                                         config.attention_probs_dropout_prob)
        self.output = PostNormOutput(config.hidden_size, config.hidden_size, config.layer_norm_eps,
                                     config.hidden_dropout_prob)

    def forward(self, x: Tensor, layout: Padded | Packing, output_attentions: bool) -> tuple[Tensor, Tensor | None]:
        context, probs = self.self(x, layout, output_attentions)  # (..., C)
        return self.output(context, x), probs  # LN(x + dropout(W context))


class BertLayer(nn.Module):
    """One post-LN encoder layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)). x: (B, T, C) or (N, C)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = DenseAct(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.output = PostNormOutput(config.intermediate_size, config.hidden_size, config.layer_norm_eps,
                                     config.hidden_dropout_prob)

    def forward(self, x: Tensor, layout: Padded | Packing, output_attentions: bool) -> tuple[Tensor, Tensor | None]:
        x, probs = self.attention(x, layout, output_attentions)
        return self.output(self.intermediate(x), x), probs  # (..., I) -> (..., C)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self, x: Tensor, layout: Padded | Packing, output_hidden_states: bool, output_attentions: bool
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        """x: (B, T, C) or (N, C) -> the last layer (B, T, C), hidden states (B, T, C) each, probabilities."""
        hidden_states = [layout.pad(x)] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layer:
            x, probs = layer(x, layout, output_attentions)
            if hidden_states is not None:
                hidden_states.append(layout.pad(x))
            if attentions is not None:
                attentions.append(probs)
        x = hidden_states[-1] if hidden_states is not None else layout.pad(x)  # (B, T, C)
        return (
            x,
            tuple(hidden_states) if hidden_states is not None else None,
            tuple(attentions) if attentions is not None else None,
        )


class BertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence representation NSP and classification heads use."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # (B, C)


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    key_rules = BERT_KEY_RULES
    attn_implementations = ENCODER_ATTN_IMPLEMENTATIONS

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            normal_init(module, std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, MaskedLMHead):
            nn.init.zeros_(module.bias)


class BertModel(BertPreTrainedModel):
    """The bare encoder: embeddings -> N encoder layers -> (optional) pooler.

    `attn_implementation` (see `nn.attention.ENCODER_ATTN_IMPLEMENTATIONS`; `from_pretrained(...,
    attn_implementation=...)` or `model.set_attn_implementation(...)`):
    - "unpadded", the default: padding tokens are dropped before the layers (embeddings, linear
      layers, attention and feed-forward run on real tokens only: `nn.packing.Packing`) and the outputs
      are re-padded. `last_hidden_state` and `hidden_states` equal transformers' at real tokens (fp32,
      within 1e-5) and hold zeros at padding positions, as ModernBERT's unpadded path does. On
      mixed-length batches this is ~2x faster on a CPU. `pooler_output` reads position 0, a real token
      with right padding (BERT tokenizers' default).
    - "sdpa": padded batches; outputs identical to transformers' at every position, padding included.
    Padded batches run anyway when attention probabilities are requested (`output_attentions=True`)
    or when `keep_padding=True` (heads pass it when a token-level loss reads padding positions:
    labels there other than IGNORE_INDEX). Gradients are the same in both modes.
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config, config.hidden_size)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.attn_implementation = DEFAULT_ATTN_IMPLEMENTATION  # (set again by post_init: heads may differ)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        *,
        keep_padding: bool = False,
    ) -> BaseModelOutput:
        layout = batch_layout(attention_mask, self.attn_implementation, output_attentions or keep_padding,
                              self.embeddings.word_embeddings.weight.dtype)  # Packing: real tokens only
        x = self.embeddings(input_ids, token_type_ids, position_ids, layout)  # (B, T, C) or (N, C)
        x, hidden_states, attentions = self.encoder(x, layout, output_hidden_states, output_attentions)  # (B, T, C)
        pooled = self.pooler(x) if self.pooler is not None else None  # (B, C)
        return BaseModelOutput(last_hidden_state=x, pooler_output=pooled, hidden_states=hidden_states, attentions=attentions)


def mean_over_tokens(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean of `hidden` (B, T, C) over the positions where `attention_mask` is 1 (all when None)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def labels_at_padding(labels: Tensor | None, attention_mask: Tensor | None) -> bool:
    """Whether a token-level loss would read padding positions (a label other than -100 there).
    Then the model runs padded, whatever its attention mode, so the loss equals transformers'."""
    if labels is None or attention_mask is None or labels.shape != attention_mask.shape:
        return False
    return bool((labels[attention_mask == 0] != IGNORE_INDEX).any())


# ---------------------------------------------------------------------------------------------- heads
BertLMPredictionHead = MaskedLMHead  # HF's name: transform -> decoder (tied to the word embeddings) + bias


def prediction_head(config: BertConfig) -> MaskedLMHead:
    return MaskedLMHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = prediction_head(config)


class BertOnlyNSPHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = prediction_head(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class _TiedMLMMixin:
    _tied_weights = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder


class BertForMaskedLM(_TiedMLMMixin, BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        sparse_mlm: bool = False,
    ) -> MaskedLMOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions,
                        keep_padding=labels_at_padding(labels, attention_mask))
        logits, loss = mlm_logits_and_loss(self.cls.predictions, out.last_hidden_state, labels, sparse_mlm)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class BertForPreTraining(_TiedMLMMixin, BertPreTrainedModel):
    """MLM + NSP, as BERT was pretrained. loss = MLM cross-entropy + NSP cross-entropy."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        next_sentence_label: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        sparse_mlm: bool = False,
    ) -> PreTrainingOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions,
                        keep_padding=labels_at_padding(labels, attention_mask))
        logits, mlm_loss = mlm_logits_and_loss(self.cls.predictions, out.last_hidden_state, labels, sparse_mlm)
        nsp_logits = self.cls.seq_relationship(out.pooler_output)  # (B, 2)
        loss = nsp_loss = None
        if mlm_loss is not None and next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label.reshape(-1))
            loss = mlm_loss + nsp_loss
        elif mlm_loss is not None:
            loss = mlm_loss  # the MLM-only objective (RoBERTa / Cramming style)
        return PreTrainingOutput(
            loss=loss,
            prediction_logits=logits,
            seq_relationship_logits=nsp_logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            mlm_loss=mlm_loss.detach() if mlm_loss is not None else None,
            nsp_loss=nsp_loss.detach() if nsp_loss is not None else None,
        )


class BertForNextSentencePrediction(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertOnlyNSPHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> NextSentencePredictorOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions)
        logits = self.cls.seq_relationship(out.pooler_output)  # (B, 2)
        loss = F.cross_entropy(logits.float(), labels.reshape(-1)) if labels is not None else None
        return NextSentencePredictorOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


def classifier_dropout(config: BertConfig) -> nn.Dropout:
    """Dropout before a task head: `classifier_dropout`, else the hidden dropout (as HF)."""
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


class BertForSequenceClassification(BertPreTrainedModel):
    """Pooled [CLS] -> dropout -> linear. Single sentences or pairs (token_type_ids).

    `config.classifier_pooling == "mean"`: the mean of the last hidden states over real tokens replaces
    the pooled [CLS] (the pooler's weights stay, unused). Masked-LM pretraining never trains [CLS] or the
    pooler, so a model pretrained without NSP has nothing learned there; every token's state is trained."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> SequenceClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions)
        if self.config.classifier_pooling == "mean":
            pooled = mean_over_tokens(out.last_hidden_state, attention_mask)  # (B, C)
        else:
            pooled = out.pooler_output  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.num_labels, self.config.problem_type)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class BertForTokenClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TokenClassifierOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions,
                        keep_padding=labels_at_padding(labels, attention_mask))
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Extractive QA: per-token start and end logits.

    Its loss is a softmax over every position, padding included (as in HF), so the logits at
    padding positions matter and this head always runs padded (`supports_unpadding = False`).
    """

    supports_unpadding = False

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> QuestionAnsweringOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence are clamped to T and ignored, as in HF.
            T = start_logits.size(1)
            start = start_positions.reshape(-1).clamp(0, T)
            end = end_positions.reshape(-1).clamp(0, T)
            loss = (
                F.cross_entropy(start_logits.float(), start, ignore_index=T)
                + F.cross_entropy(end_logits.float(), end, ignore_index=T)
            ) / 2
        return QuestionAnsweringOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits,
            hidden_states=out.hidden_states, attentions=out.attentions,
        )


class BertForMultipleChoice(BertPreTrainedModel):
    """Each (context, choice) pair is encoded separately; one score per choice from the pooled [CLS]."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MultipleChoiceOutput:
        B, K, T = input_ids.shape  # K choices

        def flat(t: Tensor | None) -> Tensor | None:
            return t.reshape(B * K, t.size(-1)) if t is not None else None  # (B*K, T)

        out = self.bert(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
            output_hidden_states, output_attentions,
        )
        logits = self.classifier(self.dropout(out.pooler_output)).view(B, K)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels.view(-1)) if labels is not None else None
        return MultipleChoiceOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
