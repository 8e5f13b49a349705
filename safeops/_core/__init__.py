"""The private engine every public safeops op goes through.

Modules: `dtypes` (the one dtype policy), `registry` (what each public name
replaces and how it differs), `axes` (the axis normaliser: TF's accepted forms
and errors, eager and graph), `compensated` (the compensated-sum engine and
the reduction layout), `eft` (error-free transformations), `native` (when the
fused C++ kernels run), `ragged` (RaggedTensor inputs of the reductions and
softmax); argument conversion, scalar parameters, the elementwise helpers and
the custom-gradient template live beside them. Nothing here is public API:
public modules import from `safeops._core`, never from each other's private
names.
"""
