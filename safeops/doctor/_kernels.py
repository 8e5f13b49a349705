"""Float64 formulations of TF kernels that are slow on CPU, for the profiler's float64 copies.

Each computes what the TF op it replaces computes, the same values or the same sums in
another order (within float64 rounding, bound in its docstring), checked against that
op by ``tests/test_doctor_kernels.py``.

* `conv2d`: TF's CPU float64 ``Conv2DBackpropInput`` is slower than its forward
  ``Conv2D``; with stride 1 the input gradient is a forward convolution of the output
  gradient with the kernel flipped in space and transposed in its channels, computed by
  ``Conv2D``. The forward and the kernel gradient are TF's own ops.
"""

import keras
import tensorflow as tf

__all__ = []


def conv2d(x, kernel, padding):
    """2-D convolution (NHWC, stride 1, no dilation, ``padding`` ``"VALID"`` or ``"SAME"``)
    whose input gradient is computed as a forward convolution.

    Method: forward ``tf.nn.conv2d``; gradients: kernel ``Conv2DBackpropFilter`` (TF's),
    input ``tf.nn.conv2d(pad(g), transpose(reverse(kernel, [0, 1]), [0, 1, 3, 2]),
    "VALID")`` with ``g`` padded by (k - 1 - before, k - 1 - after) per spatial axis,
    (before, after) the forward's padding of that axis ((0, 0) for VALID,
    ((k - 1) // 2, k - 1 - (k - 1) // 2) for SAME).

    Error bound: the forward and the kernel gradient are TF's ops (the same values); the
    input gradient sums the same ``k_h k_w c_out`` products as ``Conv2DBackpropInput`` in
    another order: each element within ``gamma_K * sum(|g| |w|)`` of the exact sum
    (``gamma_K = K u / (1 - K u)``, K = k_h k_w c_out, u the unit roundoff), as TF's.

    Gradient: with respect to `x` and `kernel` (first order only).

    Dtypes: float32, float64 (used here for float64).
    """
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])

    @tf.custom_gradient
    def conv(x, kernel):
        out = tf.nn.conv2d(x, kernel, 1, padding)

        def grad(g):
            dk = tf.compat.v1.nn.conv2d_backprop_filter(x, tf.shape(kernel), g, [1, 1, 1, 1],
                                                        padding)
            flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
            if padding == "SAME" and kh % 2 == 1 and kw % 2 == 1:
                dx = tf.nn.conv2d(g, flipped, 1, "SAME")  # symmetric padding: (k - 1) / 2 each side
            else:
                pads = []
                for k in (kh, kw):
                    # the forward's padding of this axis (stride 1): SAME k - 1 in all, VALID none
                    before, after = ((k - 1) // 2, k - 1 - (k - 1) // 2) if padding == "SAME" else (0, 0)
                    pads.append([k - 1 - before, k - 1 - after])
                dx = tf.nn.conv2d(tf.pad(g, [[0, 0]] + pads + [[0, 0]]), flipped, 1, "VALID")
            return dx, dk
        return out, grad

    return conv(tf.convert_to_tensor(x), tf.convert_to_tensor(kernel))


def use_fast_float64(layer):
    """Give the float64 copy `layer` the formulations above where one applies (in place: its
    ``call``); returns `layer`. Only the profiler's own copies are changed."""
    if (type(layer) is keras.layers.Conv2D and layer.compute_dtype == "float64"
          and layer.data_format == "channels_last" and tuple(layer.strides) == (1, 1)
          and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
          and layer.padding in ("same", "valid")):
        padding = layer.padding.upper()
        layer.convolution_op = lambda inputs, kernel: conv2d(inputs, kernel, padding)
    return layer
