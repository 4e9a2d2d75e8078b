"""BERT fine-tuned on the movie-review snippets (fresh or rotten): the pretrained counterpart of
experiments/reviews_bert.py.

Download once, on a machine with network, a BERT folder from the Hugging Face hub, e.g.
`google-bert/bert-base-uncased` (config.json, model.safetensors, vocab.txt, tokenizer.json):
    hf download google-bert/bert-base-uncased --local-dir ~/models/bert-base-uncased
Run (the review corpus is not shipped with jaxdl; dev machines have it in ../shared/data):
    jaxdl train experiments/reviews_bert_finetune.py init.pretrained=~/models/bert-base-uncased \
        data.dir=../shared/data/rotten_tomatoes
    jaxdl export runs/reviews_bert_finetune --format hf --out bert-reviews  # transformers loads it

Data: 12,808 Rotten Tomatoes snippets, 10% held out, in BERT's own WordPiece tokens
(data.tokenizer="pretrained": the init.pretrained folder's tokenizer), [CLS] first, 64 tokens.
Model: BERT's architecture and encoder weights from the checkpoint, a new pooler and Dense(2)
head (init.mapping copies the encoder only: the published bert-base-uncased is a pre-training
checkpoint whose pooler jaxdl does not read); dropout 0.1.
Recipe (Devlin et al. 2019's fine-tuning grid): AdamW at 2e-5 with 10% warmup and linear-ish
(cosine) decay, weight decay 0.01, batch 32, 3 epochs.

Expected: BERT-base reaches about 85-88% on this kind of sentence-level sentiment data (SST-2-like
snippets), against 78% for reviews_bert.py trained from scratch; about ten minutes on one GPU
(1,080 steps of 32 x 64 tokens). No GPU was lent to this project yet, so this has not been measured
here; `tests/test_pretrained_experiments.py` runs the recipe on a small random BERT written by the
test.
"""

from jaxdl.config import base_config


def get_config():
  config = base_config()
  config.model = {"name": "bert_classifier", "dropout_rate": 0.1}  # Sizes: init.pretrained's.
  config.init.pretrained = ""  # Give the BERT folder: init.pretrained=~/models/bert-base-uncased.
  config.init.mapping = [("encoder", "encoder")]
  config.data.name = "reviews"
  config.data.tokenizer = "pretrained"
  config.data.max_length = 64
  config.data.eval_batch_size = 256
  config.train.num_epochs = 3
  config.train.batch_size = 32
  config.train.log_every_steps = 50
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-5
  config.optimizer.weight_decay = 0.01
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100
  return config
