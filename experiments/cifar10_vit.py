"""A ViT trained from scratch on CIFAR-10: 4x4 patches of 32x32 images (64 tokens).

Run (real CIFAR-10 in the cache, downloaded, or data.dir; needs a GPU):
    jaxdl train experiments/cifar10_vit.py
    jaxdl train experiments/cifar10_vit.py model.dtype=bfloat16   # mixed precision

Recipe: the `vit_cifar` preset (ViT-Ti width 192, 9 blocks, 3 heads, MLP 768, 2.7M parameters),
random crops and flips, per-channel normalisation, AdamW (lr 1e-3, weight decay 0.05 on
matrices), 10 warmup epochs then cosine decay, label smoothing 0.1, an exponential moving average
of the weights for evaluation, batch 128, 200 epochs. ViTs without heavy augmentation (RandAugment,
mixup) typically reach 80-85% on CIFAR-10 from scratch. Not run here (no CIFAR offline, no GPU).
"""

from jaxdl.config import base_config


def get_config():
  config = base_config()
  config.model = {"name": "vit_cifar", "num_classes": 10, "dropout_rate": 0.1}
  config.data.name = "cifar10"
  config.data.eval_batch_size = 1000
  config.train.num_epochs = 200
  config.train.batch_size = 128
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.train.label_smoothing = 0.1
  config.train.ema_decay = 0.9999
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.05
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 3900  # 10 epochs of 390 steps.
  config.optimizer.grad_clip_norm = 1.0
  return config
