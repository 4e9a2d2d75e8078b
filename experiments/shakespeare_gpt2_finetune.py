"""GPT-2 (124M) continued on Shakespeare: every weight, or low-rank adapters only (LoRA).

Download once, on a machine with network, the Hugging Face folder `openai-community/gpt2`
(config.json, model.safetensors, tokenizer.json, vocab.json, merges.txt), e.g.
    hf download openai-community/gpt2 --local-dir ~/models/gpt2
Run (no network needed from here on):
    jaxdl train experiments/shakespeare_gpt2_finetune.py init.pretrained=~/models/gpt2
    jaxdl train experiments/shakespeare_gpt2_finetune.py:lora init.pretrained=~/models/gpt2
    jaxdl generate runs/shakespeare_gpt2_finetune --prompt "ROMEO:" --top-k 40
    jaxdl export runs/shakespeare_gpt2_finetune --format hf --out gpt2-shakespeare

Data: the ~1 MB Shakespeare shipped with jaxdl (data.dir=../shared/data/shakespeare reads all 42
works), in GPT-2's own byte-level BPE tokens (data.tokenizer="pretrained": the tokenizer of the
init.pretrained folder), the last 10% of the token stream held out, windows of 256 tokens.
Model: GPT-2's architecture and weights from the checkpoint (the config sets no size); dropout 0.
Recipe: nanoGPT's config/finetune_shakespeare.py scaled to the 124M model: AdamW at a constant
3e-5, batch 32 windows, 1,000 steps, evaluated every 100. The `lora` variant trains rank-8
adapters on the attention query and value projections (alpha 16) at 1e-3, the base frozen.

Expected: the evaluation at step 0 is GPT-2's own loss on Shakespeare, and fine-tuning lowers it
within the first hundred steps; on one GPU the run takes minutes (about 8k tokens a step, 124M
parameters: ~6 TFLOP a step). No GPU was lent to this project yet, so neither figure has been
measured here; `tests/test_pretrained_experiments.py` runs both variants on a small random GPT-2
written by the test.
"""

from jaxdl.config import base_config


def get_config(variant: str = ""):
  if variant not in ("", "lora"):
    raise ValueError(f"unknown variant {variant!r}; use shakespeare_gpt2_finetune.py[:lora]")
  config = base_config()
  config.model = {"name": "gpt", "dropout_rate": 0.0}  # The rest comes from init.pretrained.
  config.init.pretrained = ""  # Give the GPT-2 folder: init.pretrained=~/models/gpt2.
  config.data.name = "text"
  config.data.tokenizer = "pretrained"
  config.data.block_size = 256
  config.data.eval_batch_size = 32
  config.train.batch_size = 32
  config.train.num_steps = 1000
  config.train.eval_every_steps = 100
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 100
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-5
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 1.0
  if variant == "lora":
    config.model.lora = {"rank": 8, "alpha": 16.0, "targets": [".*(query|value)/kernel"]}
    config.optimizer.learning_rate = 1e-3
  return config
