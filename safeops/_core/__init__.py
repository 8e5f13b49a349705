"""The private engine every public safeops op goes through.

Modules: `dtypes` (the one dtype policy), `registry` (what each public name
replaces and how it differs). Further engine parts (argument and axis
conversion, scalar parameters, the custom-gradient template, error-free
transformations, native dispatch) live beside them. Nothing here is public
API: public modules import from `safeops._core`, never from each other's
private names.
"""
