"""NVIDIA Cosmos discrete image tokenizers (DI8x8 / DI16x16, FSQ) for toklip.

Importing this package is cheap; the model code (torch) loads when a component is built:
``toklip.build(vq="cosmos", encoder="siglip2")`` or ``toklip.get_spec("vq", "cosmos-test").create()``.
"""

__version__ = "0.1.0"
