"""ResNet-18 with a CIFAR stem (3x3 convolution, no max pool) on CIFAR-10.

Run (real CIFAR-10 in the cache, downloaded, or data.dir; needs a GPU):
    jaxdl train experiments/cifar10_resnet18.py

Recipe (the widely used kuangliu/pytorch-cifar one): 11.2M parameters, BatchNorm, random crops
(padding 4) and flips, per-channel normalisation; SGD with momentum 0.9, learning rate 0.1 with
cosine decay over 200 epochs, weight decay 5e-4, batch 128. Published: about 95% test accuracy.
Not run here (no CIFAR offline, no GPU); the test suite trains it for a few steps on generated
files in CIFAR's binary layout.
"""

from jaxdl.config import base_config


def get_config():
  config = base_config()
  config.model = {"name": "resnet18_cifar", "num_classes": 10}
  config.data.name = "cifar10"
  config.data.eval_batch_size = 1000
  config.train.num_epochs = 200
  config.train.batch_size = 128
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "cosine"
  return config
