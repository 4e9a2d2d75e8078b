"""A 3x3 convolution, its bias, ReLU and a 2x2 max-pool as one op, by Winograd's F(2x2, 3x3).

Winograd's minimal filtering algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016) computes a 2x2 block of a 3x3 convolution's output from a 4x4 block ("tile") of
its input with 16 multiplications per channel pair instead of 36:

    Y_tile = A^T [ (G g G^T) * (B^T d B) ] A       d: 4x4 input tile, g: 3x3 kernel, *: elementwise

Summed over input channels, the elementwise products become 16 matmuls, one per position of the
4x4 transformed tile: M[k] = V[k] @ U[k] with V [16, tiles, C] the transformed input and U
[16, C, O] the transformed kernel. A 2x2 output block is exactly one 2x2 max-pool window, so the
output transform A^T M A yields the pool's four phases directly, and the bias, ReLU and pool
follow as in jaxdl.kernels.conv_pool.

For a 3x3 convolution pooled 2x2 this needs 2.25x fewer multiply-adds than im2col over the pooled
region, in the forward pass and in both gradients (the kernel gradient is V^T dM, the input
gradient dM U^T transformed back), and no [B * Ho * Wo, 9 * C] patch or patch-gradient arrays.
How much faster a model trains is measured in benchmarks/README.md ("Winograd", "Three cuts",
"An optimization barrier").

The transforms are sums and differences (B, A) and halvings (G), so every multiplication by a
transform coefficient is exact; the results differ from a direct convolution by float rounding
only (~1e-6 relative: tests/test_winograd.py). With small-integer inputs, where every sum is
exact, they are equal to the bit. The output's transform and those of the output and input
gradients run as small matmuls against constant [4, 16], [16, 4] and [16, 16] matrices: on XLA:CPU
that is one pass each, where the same sums written out elementwise became 16 separate passes.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

from jaxdl.kernels import im2col as conv_lib
from jaxdl.kernels import pooling

# F(2, 3) in one dimension: input transform B^T (4x4), kernel transform G (4x3), output A^T (2x4).
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _kron(a, b):
  """The Kronecker product of two matrices given as nested tuples (numpy stays out of the kernels,
  and jax arrays made at import would start the backend before its flags are set)."""
  return tuple(tuple(x * y for x in row_a for y in row_b) for row_a in a for row_b in b)


# The same in two dimensions, on tiles flattened row-major.
T_INPUT = _kron(_BT, _BT)  # [16 transformed, 16 tile pixels]
T_KERNEL = _kron(_G, _G)  # [16 transformed, 9 kernel taps]
T_OUTPUT = _kron(_AT, _AT)  # [4 pool phases, 16 transformed]


def _matrix(t, dtype, transpose=False):
  m = jnp.asarray(t, dtype)
  return m.T if transpose else m


# Below this many input channels the 16 matmuls are too thin to pay for the transforms (a first
# layer with 1 or 3 channels); jaxdl.kernels.conv_pool's im2col path takes those.
MIN_CHANNELS = 8


def applies(kernel_shape, window, in_channels: int) -> bool:
  """Whether F(2x2, 3x3) runs this layer: a 2-D 3x3 kernel (stride 1), a 2x2 pool, and at least
  MIN_CHANNELS input channels."""
  return (
    len(kernel_shape) == 4
    and tuple(kernel_shape[:2]) == (3, 3)
    and tuple(window) == (2, 2)
    and in_channels >= MIN_CHANNELS
  )


def _bt_1d(rows):
  """B^T along one axis: 4 views -> 4 transformed views."""
  d0, d1, d2, d3 = rows
  return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _tile_views(x, axis: int, tiles: int):
  """The 4 views of `x` along `axis` holding pixel 2i + r of tile i, for r = 0..3."""
  views = []
  for r in range(4):
    start = [0] * x.ndim
    start[axis] = r
    limit = list(x.shape)
    limit[axis] = r + 2 * (tiles - 1) + 1
    strides = [1] * x.ndim
    strides[axis] = 2
    views.append(lax.slice(x, start, limit, strides))
  return views


def _input_transform(x, tiles_hw):
  """V = B^T d B for every 4x4 tile at stride 2, stacked on a new leading axis: [B, H, W, C] ->
  [16, B, th, tw, C].

  Written as sums of strided views: XLA:CPU makes 16 small passes and a concatenate of them
  (measured faster here than gathering the tiles and multiplying by T_INPUT)."""
  rows = _bt_1d(_tile_views(x, 1, tiles_hw[0]))
  return jnp.stack([t for row in rows for t in _bt_1d(_tile_views(row, 2, tiles_hw[1]))])


def _forward(x_padded, kernel, bias, precision):
  batch, height, width, c = x_padded.shape
  o = kernel.shape[-1]
  tiles_hw = ((height - 2) // 2, (width - 2) // 2)  # = the pooled output size
  if min(tiles_hw) < 1:
    raise ValueError(
      f"winograd: a {height}x{width} padded input has no 2x2 pooled output of a "
      "3x3 convolution; it needs at least 4x4."
    )
  dtype = x_padded.dtype
  v_KNC = _input_transform(x_padded, tiles_hw).reshape(16, -1, c)
  u_KCO = jnp.matmul(
    _matrix(T_KERNEL, dtype), kernel.reshape(9, c * o), precision=precision
  ).reshape(16, c, o)
  m_KNO = jnp.matmul(v_KNC, u_KCO, precision=precision)
  z = jnp.matmul(_matrix(T_OUTPUT, dtype), m_KNO.reshape(16, -1), precision=precision)
  # The phases next to the channels, so the pool is a reduction XLA:CPU fuses well (over a
  # leading axis it ran as a slow standalone reduction).
  z = z.reshape((4, batch) + tiles_hw + (o,)).transpose(1, 2, 3, 0, 4)  # [B, th, tw, 4, O]
  pre = z + bias  # [B, th, tw, 4, O]
  y = jax.nn.relu(jnp.max(pre, axis=-2))
  # The phase that gets each output's gradient: the first holding the maximum (ties as
  # select_and_scatter), none (4) where the ReLU is off. An argmax reduction rather than a
  # chain of compares, so XLA:CPU computes it here once instead of keeping z for the backward.
  winner = jnp.where(y > 0, jnp.argmax(pre, axis=-2).astype(jnp.int8), jnp.int8(4))
  # The transformed input laid out [16, C, N] for the kernel gradient V^T dM as a standard
  # matmul: contracting the tiles of v_KNC ran as a slower single-threaded dot. XLA folds a plain
  # transpose of v_KNC into that dot; behind an optimization barrier it stays one copy, cheaper
  # than 16 transposed slices and their stack (benchmarks/README.md, "An optimization barrier").
  vt_KCN = lax.optimization_barrier(jnp.swapaxes(v_KNC, 1, 2))
  return y, (vt_KCN, u_KCO, winner, x_padded.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv3x3_relu_max_pool2x2(x_padded, kernel, bias, precision=None):
  """relu(conv(x_padded, kernel) + bias) max-pooled over 2x2 windows, by Winograd F(2x2, 3x3).

  Args:
    x_padded: the input, already padded, [B, H, W, C], H and W >= 4.
    kernel: [3, 3, C, O]; stride 1, VALID on x_padded.
    bias: [O].
    precision: the matmuls' lax precision (None: the default).

  Returns:
    [B, (H - 2) // 2, (W - 2) // 2, O]: a VALID pool drops a last odd row or column of the
    convolution's output, as the im2col path does.
  """
  return _forward(x_padded, kernel, bias, precision)[0]


def _backward(precision, residuals, dy):
  vt_KCN, u_KCO, winner, (batch, height, width, c) = residuals
  o = dy.shape[-1]
  th, tw = dy.shape[1:3]
  dtype = dy.dtype
  through, dz = pooling.route_to_winner(dy, winner, 4, axis=0)  # dz: [4, B, th, tw, O]
  dm_KNO = jnp.matmul(
    _matrix(T_OUTPUT, dtype, transpose=True), dz.reshape(4, -1), precision=precision
  ).reshape(16, -1, o)
  du_KCO = jnp.matmul(vt_KCN, dm_KNO, precision=precision)
  dkernel = jnp.matmul(
    _matrix(T_KERNEL, dtype, transpose=True), du_KCO.reshape(16, c * o), precision=precision
  ).reshape(3, 3, c, o)
  dbias = jnp.sum(through.reshape(-1, o), axis=0)
  dv_KNC = jnp.matmul(dm_KNO, jnp.swapaxes(u_KCO, 1, 2), precision=precision)
  # d = B dV B^T per tile: the gradient of each 4x4 input tile, [4, 4, B, th, tw, C].
  dd = jnp.matmul(
    _matrix(T_INPUT, dtype, transpose=True), dv_KNC.reshape(16, -1), precision=precision
  ).reshape((4, 4, batch, th, tw, c))
  # Tiles overlap by 2 pixels: pixel (i, j) of tile (I, J) goes to (2I + i, 2J + j). Each of
  # the 16 tile pixels' grids is placed by an interior padding and the 16 are summed; in this
  # order each input pixel adds its (up to 4) terms by tile row, then column.
  order = [(i, j) for j in range(4) for i in range(4)]
  dx = conv_lib.place_and_sum([dd[i, j] for i, j in order], order, (2, 2), (height, width))
  return dx, dkernel.astype(u_KCO.dtype), dbias


conv3x3_relu_max_pool2x2.defvjp(_forward, _backward)
