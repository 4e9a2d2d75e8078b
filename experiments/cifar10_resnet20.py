"""ResNet-20 on CIFAR-10, the recipe of He et al. 2016 ("Deep residual learning", section 4.2).

Run (needs the real CIFAR-10: downloaded with its MD5 into the cache, or data.dir pointing at the
binary version `cifar-10-binary.tar.gz` / its extracted folder; a GPU makes it practical):
    jaxdl train experiments/cifar10_resnet20.py

Recipe: 3 stages of 3 basic blocks (16/32/64 channels, option-A shortcuts, 0.27M parameters),
BatchNorm, random crops (padding 4) and flips, per-channel normalisation; SGD with momentum 0.9,
learning rate 0.1 divided by 10 at 32k and 48k steps, 64k steps in all (164 epochs), weight decay
1e-4 (He et al.; many re-implementations use 5e-4), batch 128.
Published: 91.25% test accuracy (He et al., table 6). Not run here (no CIFAR offline, no GPU); the
test suite trains it for a few steps on generated files in CIFAR's binary layout.
"""

from jaxdl.config import base_config


def get_config():
  config = base_config()
  config.model = {"name": "resnet20", "num_classes": 10}
  config.data.name = "cifar10"  # Crop + flip + normalisation are the dataset's defaults.
  config.data.eval_batch_size = 1000
  config.train.num_steps = 64_000
  config.train.batch_size = 128
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "step"
  config.optimizer.decay_boundaries = [0.5, 0.75]  # 32k and 48k of 64k steps.
  config.optimizer.decay_factor = 0.1
  return config
