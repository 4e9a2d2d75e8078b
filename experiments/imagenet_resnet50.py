"""ResNet-50 on ImageNet from an image folder: the classic 90-epoch recipe (Goyal et al. 2017).

Run, with ImageNet laid out as DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG (one folder
per class, e.g. n01440764), on a machine with accelerators:
    jaxdl train experiments/imagenet_resnet50.py data.dir=/data/imagenet

Recipe: ResNet-50 (25.6M parameters, torchvision layout, the last BatchNorm of each block starting
at zero), 224x224 inputs; Inception-style random-resized crops and flips, ImageNet mean/std
normalisation, evaluation on the centre 224 crop of images resized to 256; SGD with momentum 0.9,
learning rate 0.1 x batch / 256 with 5 warmup epochs, cosine decay over 90 epochs, weight decay
1e-4 on kernels, label smoothing 0.1, batch 1024; bfloat16 compute (model.dtype). Published: about
76-77% top-1.
Limits: the images are streamed (data.streaming=true): decoded, cropped and resized per example
while training, so memory holds only the file list, but data loading is CPU-bound. One core
decodes roughly 200 ImageNet-sized JPEGs a second (about 5 ms for a 500x375 image), so set
runtime.data_threads near the host's core count (e.g. runtime.data_threads=32) and expect the input
pipeline, not the accelerators, to limit steps per second on hosts with few cores.
"""

from jaxdl.config import base_config


def get_config():
  config = base_config()
  config.model = {"name": "resnet50", "zero_init_residual": True, "dtype": "bfloat16"}
  config.data.name = "image_folder"
  config.data.image_size = 224
  config.data.augment = "inception"  # Random-resized crops of the original images: needs streaming.
  config.data.streaming = True
  config.data.eval_batch_size = 1000
  config.train.num_epochs = 90
  config.train.batch_size = 1024
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 5000
  config.train.label_smoothing = 0.1
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.4  # 0.1 x 1024 / 256
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 6255  # 5 epochs of 1251 steps.
  return config
