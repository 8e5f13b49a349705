"""Float64 formulations of TF kernels that are slow on CPU, for the profiler's float64 copies.

Each computes what the TF op it replaces computes, the same values or the same sums in
another order (within float64 rounding, bound in its docstring), checked against that
op by ``tests/test_doctor_kernels.py``.

* `conv2d`: TF's CPU float64 ``Conv2DBackpropInput`` is slower than its forward
  ``Conv2D``; with stride 1 the input gradient is a forward convolution of the output
  gradient with the kernel flipped in space and transposed in its channels. On the CPU
  outside XLA, with the fused kernels loaded (`safeops.native`), the forward, that input
  gradient and the kernel gradient are ``safeops/native/doctor.cc``'s float64 convolution
  kernels (vectorised for this CPU; TF's float64 kernels are not); elsewhere TF's ``Conv2D``
  and ``Conv2DBackpropFilter``.
* `max_pool2d`: TF's ``max_pool`` forward; on the CPU outside XLA with the kernels loaded,
  its gradient is ``doctor.cc``'s float64 MaxPoolGrad, the same selection and the same sums
  in the same order as TF's ``MaxPoolGrad`` (the same bits); elsewhere TF's.
"""

import keras
import tensorflow as tf

from safeops._core.native import kernels

__all__ = []

_F64 = (tf.float64,)


def _same_pads(k, padding):
    """(before, after) padding of a stride-1 axis of kernel size k: TF's SAME or VALID."""
    return ((k - 1) // 2, k - 1 - (k - 1) // 2) if padding == "SAME" else (0, 0)


def conv2d(x, kernel, padding):
    """2-D convolution (NHWC, stride 1, no dilation, ``padding`` ``"VALID"`` or ``"SAME"``)
    whose input gradient is computed as a forward convolution.

    Method: with (before, after) the forward's padding of each spatial axis ((0, 0) for
    VALID, ((k - 1) // 2, k - 1 - (k - 1) // 2) for SAME), the input gradient is the forward
    convolution of ``g`` padded by (k - 1 - before, k - 1 - after) with
    ``transpose(reverse(kernel, [0, 1]), [0, 1, 3, 2])``. float64 on the CPU outside XLA
    with the kernels loaded: the forward, that input gradient and the kernel gradient are
    ``SafeopsConv2DFloat64`` and ``SafeopsConv2DFilterGradFloat64`` (each output one sum of
    its products in a fixed order, FMA where the CPU has it; the kernel gradient's batch is
    cut into groups fixed by the shape, their sums added in order: the bits do not depend on
    the thread count). Elsewhere: forward ``tf.nn.conv2d``, kernel gradient TF's
    ``Conv2DBackpropFilter``, input gradient ``tf.nn.conv2d`` as above.

    Error bound: every output is a sum of the same K products as TF's op in another order:
    within ``gamma_K * sum(|a| |b|)`` of the exact sum (``gamma_K = K u / (1 - K u)``, u the
    unit roundoff; the sum over the same products of absolute values), as TF's. K is
    ``k_h k_w c_in`` for the forward, ``k_h k_w c_out`` for the input gradient and
    ``n out_h out_w`` for the kernel gradient.

    Gradient: with respect to `x` and `kernel` (first order only).

    Dtypes: float32, float64 (the native kernels: float64).
    """
    x, kernel = tf.convert_to_tensor(x), tf.convert_to_tensor(kernel)
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    (pt, pb), (pl, pr) = _same_pads(kh, padding), _same_pads(kw, padding)
    lib = kernels(x, _F64) if kernel.dtype == tf.float64 else None
    if lib is not None:
        pads, back = [pt, pb, pl, pr], [kh - 1 - pt, kh - 1 - pb, kw - 1 - pl, kw - 1 - pr]

        @tf.custom_gradient
        def native_conv(x, kernel):
            def grad(g):
                dk = lib.safeops_conv2d_filter_grad_float64(x, g, padding=pads)
                flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
                return lib.safeops_conv2d_float64(g, flipped, padding=back), dk
            return lib.safeops_conv2d_float64(x, kernel, padding=pads), grad

        return native_conv(x, kernel)

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
                pads = [[kh - 1 - pt, kh - 1 - pb], [kw - 1 - pl, kw - 1 - pr]]
                dx = tf.nn.conv2d(tf.pad(g, [[0, 0]] + pads + [[0, 0]]), flipped, 1, "VALID")
            return dx, dk
        return out, grad

    return conv(x, kernel)


def max_pool2d(x, ksize, strides, padding):
    """``tf.nn.max_pool2d`` (NHWC, 2-D ``ksize`` and ``strides``, ``"VALID"`` or ``"SAME"``)
    whose float64 gradient on the CPU is ``SafeopsMaxPoolGradFloat64``.

    Method: the forward is TF's ``max_pool`` (the same values). The gradient of each output
    goes to the first maximum of its window in row-major order (a NaN only as the window's
    first element), and the gradients reaching one input are added from zero in the order
    of the outputs: TF's ``MaxPoolGrad`` rule and order, so the same bits. Elsewhere (not
    float64, XLA, GPU, kernels unavailable) TF's own gradient.

    Error bound: none beyond TF's (the same values).

    Gradient: with respect to `x` (first order only).

    Dtypes: any TF's ``max_pool`` takes (the native gradient: float64).
    """
    x = tf.convert_to_tensor(x)
    ksize, strides = [int(k) for k in ksize], [int(s) for s in strides]
    lib = kernels(x, _F64)
    if lib is None:
        return tf.nn.max_pool2d(x, ksize, strides, padding)

    @tf.custom_gradient
    def pool(x):
        def grad(g):
            return lib.safeops_max_pool_grad_float64(x, g, ksize=ksize, strides=strides,
                                                     padding=padding)
        return tf.nn.max_pool2d(x, ksize, strides, padding), grad

    return pool(x)


def use_fast_float64(layer):
    """Give the float64 copy `layer` the formulations above where one applies (in place: its
    ``call``); returns `layer`. Only the profiler's own copies are changed."""
    if (type(layer) is keras.layers.Conv2D and layer.compute_dtype == "float64"
          and layer.data_format == "channels_last" and tuple(layer.strides) == (1, 1)
          and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
          and layer.padding in ("same", "valid")):
        padding = layer.padding.upper()
        layer.convolution_op = lambda inputs, kernel: conv2d(inputs, kernel, padding)
    elif (type(layer) is keras.layers.MaxPooling2D and layer.compute_dtype == "float64"
          and layer.data_format == "channels_last" and layer.padding in ("same", "valid")):
        ksize, strides, padding = tuple(layer.pool_size), tuple(layer.strides), layer.padding.upper()
        layer.call = lambda inputs: max_pool2d(inputs, ksize, strides, padding)
    return layer
