"""nanoGPT's "baby GPT" on Shakespeare, character by character, and a CPU-sized variant.

Run (the ~1 MB Shakespeare corpus shipped with jaxdl; no download):
    jaxdl train experiments/shakespeare_char_gpt.py          # the GPU recipe
    jaxdl train experiments/shakespeare_char_gpt.py:cpu      # minutes on a laptop CPU
then sample from it:
    jaxdl generate runs/shakespeare_char_gpt_cpu --prompt "ROMEO:" --max-new-tokens 300 --top-k 40

Recipe (Karpathy's nanoGPT config/train_shakespeare_char.py): 6 layers, 6 heads, 384 wide, context
256, dropout 0.2, batch 64, AdamW (lr 1e-3, beta2 0.99, weight decay 0.1 on matrices), 100 warmup
steps, cosine to 1e-4 over 5000 steps, gradient clipping at 1.0; 10.7M parameters. nanoGPT reports
a validation loss of about 1.47 after 5000 steps on one A100 (~3 minutes).

The `cpu` variant is nanoGPT's own CPU suggestion (4 layers, 4 heads, 128 wide, context 64, batch
12, no dropout, 2000 steps); nanoGPT quotes a validation loss of about 1.88 for it.
Measured here (2-core x86 CPU, jax 0.10.2, 2026-11-28): the `cpu` variant reaches a validation
loss of 1.834 (perplexity 6.26) after 2000 steps in 4 min 10 s. The full recipe needs a GPU (about
10M parameters at context 256); it was not run on this machine.
"""

from jaxdl.config import base_config


def get_config(variant: str = ""):
  if variant not in ("", "cpu"):
    raise ValueError(
      f"unknown variant {variant!r}; use shakespeare_char_gpt.py or shakespeare_char_gpt.py:cpu"
    )
  config = base_config()
  config.model = {
    "name": "gpt",
    "num_layers": 6,
    "num_heads": 6,
    "embed_dim": 384,
    "block_size": 256,
    "dropout_rate": 0.2,
    "use_bias": False,
  }
  config.data.name = "text"  # Empty data.dir: the shipped Shakespeare corpus.
  config.data.tokenizer = "char"
  config.data.block_size = 256
  config.data.eval_batch_size = 64
  config.train.num_steps = 5000
  config.train.batch_size = 64
  config.train.eval_every_steps = 500
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  opt = config.optimizer
  opt.name = "adamw"
  opt.learning_rate = 1e-3
  opt.b2 = 0.99
  opt.weight_decay = 0.1
  opt.schedule = "cosine"
  opt.warmup_steps = 100
  opt.end_learning_rate = 1e-4
  opt.grad_clip_norm = 1.0
  if variant == "cpu":
    config.model.update(
      {"num_layers": 4, "num_heads": 4, "embed_dim": 128, "block_size": 64, "dropout_rate": 0.0}
    )
    config.data.block_size = 64
    config.data.eval_batch_size = 256
    config.train.batch_size = 12
    config.train.num_steps = 2000
    config.train.eval_every_steps = 500
  return config
