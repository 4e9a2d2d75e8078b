"""Kernels: faster ways to compute what a plain layer computes, behind one switch per model.

Pure JAX functions (this package imports jax only: no Flax, no optimizers, no files), most with
hand-written gradients, each giving what the plain path gives, to the bit or up to float rounding
as its docstring states, with a test that compares the two. Most are CPU speed paths: XLA:CPU
runs some ops far below matmul speed (a convolution's kernel gradient, a max-pool's
select_and_scatter, a softmax's row-sum derivative, a scanned LSTM's per-step bookkeeping), and
these rewrite them as matmuls and fused elementwise work.

    im2col      convolutions as matmuls over image patches            tests/test_conv.py
    conv_pool   convolution, bias, ReLU and max-pool as one op        tests/test_conv_pool.py
    winograd    that op by Winograd's F(2x2, 3x3)                     tests/test_winograd.py
    pooling     tiling max/avg pools as reshape and reduce            tests/test_pooling.py
    lstm        an LSTM's recurrence with a hand-written gradient     tests/test_kernels_sequence.py
    softmax     softmax whose derivative sums rows by matmuls         tests/test_kernels_sequence.py
    dense       Dense layers on [B*T, D] rows                         tests/test_kernels_sequence.py

Models reach them through their layers: a CNN's `kernels` field (jaxdl.nn.conv_layers, compared
with Flax's layers in tests/test_conv_layers.py), the LSTM cell's recurrence, attention's softmax.
Measured figures live in benchmarks/README.md.
"""
