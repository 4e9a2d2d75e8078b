"""BERT's masked-LM objective on Shakespeare: a small BERT from scratch on characters, or a
published BERT continued on the plays in its own WordPiece tokens.

Run (the ~1 MB Shakespeare corpus shipped with jaxdl; no download):
    jaxdl train experiments/shakespeare_bert_mlm.py                  # from scratch, characters
    jaxdl train experiments/shakespeare_bert_mlm.py:pretrained init.pretrained=~/models/bert
(the `pretrained` variant takes any Hugging Face BERT folder with masked-LM weights, e.g.
google-bert/bert-base-uncased downloaded once to ~/models/bert; its architecture and tokenizer
come from it).

Objective (Devlin et al. 2019): rows of [CLS] + 126 tokens + [SEP]; 15% of each row's tokens are
chosen, of which 80% become [MASK], 10% a random token and 10% stay; the loss and the accuracy
are over the chosen tokens only. The masks are a function of the seed and the batch's index, so a
resumed run sees exactly the masks of an uninterrupted one, and every evaluation scores the same
positions (`jaxdl/data/masking.py`).
Recipe (from scratch): 4 post-LN blocks, 4 heads, 128 wide, MLP 512, dropout 0.1; AdamW 1e-3,
weight decay 0.01, 100 warmup steps, cosine over 3,000 steps, batch 32. The `pretrained` variant:
AdamW 5e-5, batch 16, 1,000 steps.

Expected: from scratch the masked-character loss falls from ln(70) = 4.25 towards ~1.5 (most
characters follow from their neighbours); it has not been timed on this machine. A published
BERT starts near its pre-training loss on English prose (~2 on WordPiece tokens) and continues
from there; no GPU was lent to this project to measure it. tests/test_masked_lm.py and
tests/test_pretrained_experiments.py run both on tiny sizes.
"""

from jaxdl.config import base_config


def get_config(variant: str = ""):
  if variant not in ("", "pretrained"):
    raise ValueError(f"unknown variant {variant!r}; use shakespeare_bert_mlm.py[:pretrained]")
  config = base_config()
  config.model = {
    "name": "bert_mlm",
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 128,
    "mlp_dim": 512,
    "max_length": 128,
    "dropout_rate": 0.1,
  }
  config.data.name = "text"
  config.data.objective = "masked_lm"
  config.data.mask_rate = 0.15
  config.data.tokenizer = "char"
  config.data.block_size = 128
  config.data.eval_batch_size = 64
  config.train.num_steps = 3000
  config.train.batch_size = 32
  config.train.eval_every_steps = 500
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  opt = config.optimizer
  opt.name = "adamw"
  opt.learning_rate = 1e-3
  opt.weight_decay = 0.01
  opt.schedule = "cosine"
  opt.warmup_steps = 100
  if variant == "pretrained":
    config.model = {"name": "bert_mlm", "dropout_rate": 0.1}  # Sizes: init.pretrained's.
    config.init.pretrained = ""  # Give the BERT folder.
    config.data.tokenizer = "pretrained"
    config.train.num_steps = 1000
    config.train.batch_size = 16
    opt.learning_rate = 5e-5
  return config
