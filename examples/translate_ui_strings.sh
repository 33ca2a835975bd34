#!/usr/bin/env bash
# The real run of README "A real run": English -> Simplified Chinese UI strings (the zh_CN gettext catalogs of
# the installed Debian packages, split by catalog), a Marian-shaped model (marian-mini: 4+4 layers x 256, 4
# heads, FFN 1024, shared 8,000-token Unigram vocabulary) trained from scratch vs. initialised from denoising
# pretraining on both languages' text of the TRAINING catalogs. One thread per run, at most two runs at once.
# These are the commands as run (2026-12-01, 21:43-22:18 UTC, commit 6834f1a, 2-core CPU shared with other jobs;
# a first pretraining try at the default --batch-size 32 ran ~8 s/step, i.e. ~150 steps in 20 minutes, and was
# stopped after 20 steps for batch 8). Results: README, "A real run".
set -euo pipefail
PY=${PY:-python}
LMF="$PY -m lmforge.cli"
export OMP_NUM_THREADS=1
R=runs/uizh

# 0. One shared tokenizer: SentencePiece-style Unigram (<pad> 0, </s> 1, <unk> 2, <s> 3, <mask> 4), trained on
#    `--corpus ui-strings-en-zh` = English and Chinese lines of the training catalogs only.
$LMF tokenizer train ui-strings-en-zh --kind unigram --vocab-size 8000 -o $R/tokenizer

# The architecture as `pretrain --objective denoise --arch marian --preset marian-mini` builds it (same
# function), written as a config folder without weights, so the from-scratch model is exactly the same shape.
$PY - <<'EOF'
from lmforge.recipes.pretrain import PretrainOptions, seq2seq_config
from lmforge.tokenizers import AutoTokenizer
opts = PretrainOptions(objective="denoise", model_type="marian", preset="marian-mini")
seq2seq_config(opts, AutoTokenizer.from_pretrained("runs/uizh/tokenizer")).save_pretrained("runs/uizh/marian-mini-config")
EOF

# 1. Denoising pretraining (BART text infilling, 30% of tokens in Poisson(3) spans), 20 minutes (the step count
#    is fitted to the budget), batch 8 x 128 tokens, no dropout while pretraining (config exported with 0.1).
$LMF pretrain --objective denoise --arch marian --preset marian-mini --corpus ui-strings-en-zh \
    --tokenizer $R/tokenizer -o $R/denoise --max-minutes 20 --batch-size 8 --dropout 0 --threads 1 --no-progress &

# 2. In parallel: from scratch (random weights, same config + tokenizer), a fixed budget of 900 steps x 32 pairs
#    (~0.93 epoch; ~20 minutes at 1 thread next to run 1), validation by greedy generation every 300 steps.
FT="--data ui-strings-en-zh --max-steps 900 --eval-every 300 --eval-samples 300 --batch-size 32 \
    --learning-rate 5e-4 --seed 0 --threads 1 --no-progress"
$LMF finetune --task seq2seq --model $R/marian-mini-config --tokenizer $R/tokenizer -o $R/mt-scratch $FT
wait

# 3. The pretrained model, the same budget and settings.
$LMF finetune --task seq2seq --model $R/denoise/final -o $R/mt-pretrained $FT

# 4. Held-out catalogs (the test split: 17 catalogs, 3,800 pairs), beam 4.
for m in mt-scratch mt-pretrained; do
    $LMF evaluate $R/$m/best --data ui-strings-en-zh --split test --num-beams 4 --threads 1 \
        --predictions $R/$m/test_beam4.jsonl -o $R/$m/test_beam4.json &
done
wait
