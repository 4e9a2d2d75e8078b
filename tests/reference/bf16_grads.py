"""What a bfloat16 convolution's gradients must be: the float32 gradients of the same inputs rounded
to bfloat16, and how far bfloat16 arithmetic may move them.

Every gradient entry of a convolution (bias included) is a sum of products of inputs: sum x * dz
for a kernel entry, sum kernel * dz for an input pixel, sum dz for a bias. Products of bfloat16
numbers are exact in float32, so on bfloat16-rounded inputs the float32 path computes each entry
to float32 rounding. A bfloat16 path rounds partial results to 8 significant bits, each rounding
moving a result by at most 2^-9 (half an ulp) of the magnitudes it sums: its error is at most
(number of roundings) x 2^-9 x the sum of the absolute values of the terms, `bounds` (the same
gradients taken of |inputs| at |cotangent|). Winograd's transforms mix the pixels of a tile before
rounding, so there an entry's error follows its tile's magnitudes rather than its own, and
`assert_within(..., per_entry=False)` measures each tensor's errors against its largest bound.

A ReLU and max-pool after the convolution route each output's gradient by comparisons that
bfloat16 rounding of the forward pass can flip; `reference` zeroes the cotangent of the outputs
whose window is that close to a tie or to zero, so that both paths route every gradient alike.
"""

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def rounded(tree: Any) -> Any:
  """The float32 arrays of `tree` rounded to bfloat16, kept as float32 (in numpy: no compiling)."""
  return jax.tree.map(
    lambda a: np.asarray(a, np.float32).astype(jnp.bfloat16).astype(np.float32), tree
  )


def _pooled_windows(z_BHWO: jax.Array, window: Sequence[int]) -> jax.Array:
  """[B, H, W, O] -> [B, H // wh, W // ww, O, wh * ww]: each VALID pool window's values."""
  b, h, w, o = z_BHWO.shape
  (wh, ww), (ph, pw) = window, (h // window[0], w // window[1])
  z = z_BHWO[:, : ph * wh, : pw * ww].reshape(b, ph, wh, pw, ww, o)
  return z.transpose(0, 1, 3, 5, 2, 4).reshape(b, ph, pw, o, wh * ww)


@functools.partial(jax.jit, static_argnames=("conv", "window", "margin"))
def reference(
  conv: Callable[[Any, jax.Array], jax.Array],
  params: Any,
  x_BHWC: jax.Array,
  dy: jax.Array,
  window: Sequence[int] | None = None,
  margin: float = 2**-6,
):
  """(y, dy, grads, bounds) for `conv(params, x)` [B, H, W, O] (a convolution plus bias, float32),
  followed, with `window`, by a ReLU and a VALID max-pool of that window (2-D).

  Args:
    conv, params, x_BHWC, dy: the convolution, its inputs and the output's cotangent, each
      already rounded to bfloat16 (`rounded`).
    window: the max-pool's window (and strides), or None for the convolution alone.
    margin: a pool window counts as near a tie, and its cotangent is zeroed, where its top two
      pre-activations, or its top one and zero, are closer than `margin` x the largest sum of
      the absolute values of the window's terms (bfloat16's forward pass is accurate to a few 2^-9
      of that: Winograd's measured at 3 or less; a window is rounded across a tie only nearer).

  Returns:
    y: the float32 output; dy: the cotangent used (zeros at near ties); grads: the float32
    (params, x) gradients at it; bounds: for each gradient entry, the sum of its terms' absolute
    values.
  """
  z = conv(params, x_BHWC)
  head = lambda z: z
  if window is not None:
    windows = _pooled_windows(z, window)
    top2 = jnp.sort(windows, axis=-1)[..., -2:]
    abs_z = conv(jax.tree.map(jnp.abs, params), jnp.abs(x_BHWC))
    scale = jnp.max(_pooled_windows(abs_z, window), axis=-1)
    clear = (top2[..., 1] - top2[..., 0] > margin * scale) & (
      jnp.abs(top2[..., 1]) > margin * scale
    )
    dy = jnp.where(clear, dy, 0.0)
    head = lambda z: jnp.max(_pooled_windows(jnp.maximum(z, 0.0), window), axis=-1)
  y, head_vjp = jax.vjp(head, z)
  dz = head_vjp(dy)[0]
  grads = jax.vjp(conv, params, x_BHWC)[1](dz)
  abs_params, abs_x = jax.tree.map(jnp.abs, params), jnp.abs(x_BHWC)
  bounds = jax.vjp(conv, abs_params, abs_x)[1](jnp.abs(dz))
  return y, dy, grads, bounds


def assert_within(
  got: Any, want: Any, bounds: Any, roundings: float, per_entry: bool = True
) -> None:
  """`got` (bfloat16 gradients) within `roundings` x 2^-9 x the bound of `want`: each entry's own
  bound, or with `per_entry=False` (Winograd) its tensor's largest."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, g), w, b in zip(
    jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), jax.tree.leaves(bounds)
  ):
    g, w, b = (np.asarray(a, np.float32) for a in (g, w, b))
    assert b.max() > 0, f"{jax.tree_util.keystr(path)}: an all-zero gradient compares nothing"
    scale = b if per_entry else np.full_like(b, b.max())
    excess = np.abs(g - w) - roundings * 2.0**-9 * scale
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= 0, (
      f"{jax.tree_util.keystr(path)}{list(map(int, worst))}: got {g[worst]:.5g}, want "
      f"{w[worst]:.5g}: off by {abs(g[worst] - w[worst]) / scale[worst] / 2.0**-9:.1f} x 2^-9 "
      f"of the sum of terms' magnitudes {scale[worst]:.3g}; at most {roundings} allowed"
    )
