"""ELECTRA (Clark et al. 2020): BERT's encoder, embeddings of their own width, and ELECTRA's heads, in one file.

The encoder layers and the embeddings are BERT's classes (`models.bert.model`), so the CPU fast paths apply to
them exactly as to BERT (`lmforge.cpu.fast_paths`, called by `post_init`). What differs from BERT:
- embeddings are `embedding_size` wide and `embeddings_project` (a linear layer) maps them to `hidden_size`
  when the two differ; there is no pooler;
- the discriminator head (`ElectraForPreTraining`): dense -> activation -> one logit per token, "was this token
  replaced?"; its loss is binary cross-entropy over the non-padding tokens (transformers' rule);
- the generator head (`ElectraForMaskedLM`): dense to `embedding_size` -> GELU -> LayerNorm, then
  `generator_lm_head`, whose weight is the word embedding matrix (tied) and which has its own bias;
- sequence classification reads the first token through dense -> GELU -> out_proj (no tanh pooler).
Module attribute names equal HF's checkpoint names (see keys.py). Shape legend: `lmforge.nn.attention`'s,
E = embedding_size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.attention import DEFAULT_ATTN_IMPLEMENTATION, ENCODER_ATTN_IMPLEMENTATIONS
from ...nn.heads import mlm_logits_and_loss, sequence_classification_loss
from ...nn.mlp import ACTIVATIONS, DenseActNorm
from ...nn.packing import batch_layout
from ...outputs import (
    BaseModelOutput,
    ElectraForPreTrainingOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from ..base import PreTrainedModel, normal_init
from ..bert.model import BertEmbeddings, BertEncoder, classifier_dropout, labels_at_padding
from .config import ElectraConfig
from .keys import BASE_MODEL_PREFIX, KEY_RULES, TIED_WEIGHTS


class ElectraPreTrainedModel(PreTrainedModel):
    config_class = ElectraConfig
    base_model_prefix = BASE_MODEL_PREFIX
    key_rules = KEY_RULES
    attn_implementations = ENCODER_ATTN_IMPLEMENTATIONS

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            normal_init(module, self.config.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ElectraModel(ElectraPreTrainedModel):
    """Embeddings (E wide) -> embeddings_project (E -> C, when E != C) -> BERT's encoder. No pooler.
    Attention modes as `BertModel` ("unpadded" default: zeros at padding positions; "sdpa")."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config, config.embedding_size)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)
        self.encoder = BertEncoder(config)
        self.attn_implementation = DEFAULT_ATTN_IMPLEMENTATION
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
        x = self.embeddings(input_ids, token_type_ids, position_ids, layout)  # (B, T, E) or (N, E)
        if hasattr(self, "embeddings_project"):
            x = self.embeddings_project(x)  # (..., C)
        x, hidden_states, attentions = self.encoder(x, layout, output_hidden_states, output_attentions)  # (B, T, C)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states, attentions=attentions)


# ---------------------------------------------------------------------------------------------- heads
class ElectraDiscriminatorPredictions(nn.Module):
    """dense -> activation -> dense_prediction: one logit per token, "replaced" if > 0."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.hidden_act]
        self.dense_prediction = nn.Linear(config.hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense_prediction(self.activation(self.dense(x))).squeeze(-1)  # (B, T, C) -> (B, T)


def replaced_token_loss(logits: Tensor, labels: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean binary cross-entropy of "replaced" logits (B, T) against 0/1 labels (B, T) over the tokens whose
    attention_mask is 1 (all tokens without a mask): transformers' ElectraForPreTraining loss."""
    logits, labels = logits.float(), labels.float()
    if attention_mask is not None:
        real = attention_mask == 1
        logits, labels = logits[real], labels[real]  # (N,)
    return F.binary_cross_entropy_with_logits(logits, labels)


class ElectraForPreTraining(ElectraPreTrainedModel):
    """The discriminator: per-token logits of "this token was replaced" (B, T). `labels` (B, T): 1 replaced,
    0 original; the loss skips padding (attention_mask 0)."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)
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
    ) -> ElectraForPreTrainingOutput:
        out = self.electra(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           output_attentions)
        logits = self.discriminator_predictions(out.last_hidden_state)  # (B, T)
        loss = replaced_token_loss(logits, labels, attention_mask) if labels is not None else None
        return ElectraForPreTrainingOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                           attentions=out.attentions)


class GeneratorHead:
    """The generator's MLM head seen as one head (logits and `loss`), like BERT's `MaskedLMHead`. A view, not a
    module: its parameters stay where transformers' names put them (`generator_predictions`, `generator_lm_head`)."""

    def __init__(self, transform: nn.Module, lm_head: nn.Linear):
        self.transform = transform
        self.lm_head = lm_head

    def __call__(self, x: Tensor) -> Tensor:
        return self.lm_head(self.transform(x))  # (..., V)

    def loss(self, x: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(self(x).float(), targets)


class ElectraForMaskedLM(ElectraPreTrainedModel):
    """The generator: generator_predictions (dense C -> E, GELU, LayerNorm) -> generator_lm_head (E -> V, weight
    tied to the word embeddings). `sparse_mlm=True`: the head runs only where labels != -100 (as BERT's)."""

    _tied_weights = TIED_WEIGHTS

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.electra = ElectraModel(config)
        # transformers hard-codes GELU here, whatever hidden_act says.
        self.generator_predictions = DenseActNorm(config.hidden_size, config.embedding_size, "gelu",
                                                  config.layer_norm_eps)
        self.generator_lm_head = nn.Linear(config.embedding_size, config.vocab_size)
        self.post_init()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.generator_lm_head.weight = self.electra.embeddings.word_embeddings.weight

    def get_output_embeddings(self) -> nn.Linear:
        return self.generator_lm_head

    def mlm_head(self) -> GeneratorHead:
        """generator_predictions -> generator_lm_head as one head, what `nn.heads.mlm_logits_and_loss` takes."""
        return GeneratorHead(self.generator_predictions, self.generator_lm_head)

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
        out = self.electra(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           output_attentions, keep_padding=labels_at_padding(labels, attention_mask))
        logits, loss = mlm_logits_and_loss(self.mlm_head(), out.last_hidden_state, labels, sparse_mlm)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class ElectraClassificationHead(nn.Module):
    """First token -> dropout -> dense -> GELU -> dropout -> out_proj (ELECTRA's, instead of BERT's tanh pooler)."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = classifier_dropout(config)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x[:, 0])  # (B, C)
        x = self.dropout(F.gelu(self.dense(x)))
        return self.out_proj(x)  # (B, num_labels)


class ElectraForSequenceClassification(ElectraPreTrainedModel):
    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.electra = ElectraModel(config)
        self.classifier = ElectraClassificationHead(config)
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
        out = self.electra(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           output_attentions)
        logits = self.classifier(out.last_hidden_state)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.num_labels, self.config.problem_type)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class ElectraForTokenClassification(ElectraPreTrainedModel):
    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.electra = ElectraModel(config)
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
        out = self.electra(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                           output_attentions, keep_padding=labels_at_padding(labels, attention_mask))
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
