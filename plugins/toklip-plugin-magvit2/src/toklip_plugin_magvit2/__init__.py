"""Open-MAGVIT2 (lookup-free quantisation) image tokenizer for toklip.

Importing this package is cheap; the model code (torch) loads when a component is built:
``toklip.build(vq="magvit2", encoder="siglip2")`` or ``toklip.get_spec("vq", "magvit2-test").create()``.
"""

__version__ = "0.1.0"
