"""Pure Flax Linen models. This package imports jax and flax only: no optimizers, files or data.

Families, one a file: `cnn` (the seed's MNIST CNN), `cells` and `recurrent` (RNN, LSTM and GRU on
lax.scan), `rnn_models` (models built on them), `attention` (dot-product and multi-head attention
with masks and a KV cache), `transformer` (blocks), and the models built of blocks: `gpt`, `bert`,
`seq2seq`, `vit`; the vision CNNs `vgg`, `resnet`, `densenet`. `conv_layers` builds a CNN's
convolution and pooling layers by kernel set (Flax's, or the CPU speed paths of jaxdl.kernels)
behind one model field; `pooling` is Flax's pooling with a faster path for tiling windows.
`compose` assembles models from parts (Sequential, Residual, Parallel and adapters); `dropout`
is Flax's Dropout that also takes a traced rate (for sweeps). `registry` finds models
and their standard configurations by name.
"""

from jaxdl.nn import registry
from jaxdl.nn.attention import (
  MultiHeadAttention,
  causal_mask,
  combine_masks,
  dot_product_attention,
  length_mask,
  padding_mask,
)
from jaxdl.nn.bert import BERT_PRESETS, BertClassifier, BertEncoder, BertForMaskedLM
from jaxdl.nn.cells import GRUCell, LSTMCell, SimpleRNNCell, make_cell
from jaxdl.nn.cnn import MnistCNN
from jaxdl.nn.compose import (
  RNN,
  AttentionPooling,
  BatchNorm,
  Classifier,
  Dropout,
  Embed,
  Flatten,
  GlobalAvgPool,
  ImageRows,
  ImageTokens,
  Parallel,
  Pool,
  PositionEmbedding,
  Residual,
  Sequential,
  takes_train,
)
from jaxdl.nn.conv_layers import ConvLayers, ConvReluMaxPool
from jaxdl.nn.densenet import DENSENET_PRESETS, DenseNet
from jaxdl.nn.gpt import GPT, GPT_PRESETS
from jaxdl.nn.recurrent import Bidirectional, Recurrent, StackedRNN
from jaxdl.nn.registry import MODELS, PRESETS, model_kwargs, register
from jaxdl.nn.resnet import CIFAR_RESNET_PRESETS, RESNET_PRESETS, CifarResNet, ResNet
from jaxdl.nn.rnn_models import RNNLanguageModel, RNNTextClassifier, RowsRNNClassifier
from jaxdl.nn.seq2seq import SEQ2SEQ_PRESETS, Seq2SeqTransformer, greedy_decode
from jaxdl.nn.transformer import Mlp, TransformerBlock
from jaxdl.nn.vgg import VGG, VGG_PRESETS
from jaxdl.nn.vit import VIT_PRESETS, ViT

# Every model registers itself in its own file (@registry.register above the class).

__all__ = [
  "CIFAR_RESNET_PRESETS",
  "CifarResNet",
  "DENSENET_PRESETS",
  "DenseNet",
  "RESNET_PRESETS",
  "ResNet",
  "VGG",
  "VGG_PRESETS",
  "VIT_PRESETS",
  "ViT",
  "ConvLayers",
  "ConvReluMaxPool",
  "BERT_PRESETS",
  "Bidirectional",
  "BertClassifier",
  "BertEncoder",
  "BertForMaskedLM",
  "GPT",
  "GPT_PRESETS",
  "GRUCell",
  "LSTMCell",
  "MODELS",
  "Mlp",
  "MnistCNN",
  "MultiHeadAttention",
  "PRESETS",
  "RNNLanguageModel",
  "RNNTextClassifier",
  "Recurrent",
  "RowsRNNClassifier",
  "SEQ2SEQ_PRESETS",
  "Seq2SeqTransformer",
  "SimpleRNNCell",
  "StackedRNN",
  "TransformerBlock",
  "causal_mask",
  "combine_masks",
  "dot_product_attention",
  "greedy_decode",
  "length_mask",
  "make_cell",
  "model_kwargs",
  "padding_mask",
  "register",
  "registry",
  # compose: combinators and adapters.
  "AttentionPooling",
  "BatchNorm",
  "Classifier",
  "Dropout",
  "Embed",
  "Flatten",
  "GlobalAvgPool",
  "ImageRows",
  "ImageTokens",
  "Parallel",
  "Pool",
  "PositionEmbedding",
  "RNN",
  "Residual",
  "Sequential",
  "takes_train",
]
