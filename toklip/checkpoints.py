"""Moved: the readers to :mod:`toklip.weights` (``read_checkpoint``, ``unwrap_state_dict``,
``load_state_dict_strict``), the official key layout to :mod:`toklip.weights.official`, ``load_official`` and
friends to :mod:`toklip.model.loading`. This path keeps working for plugins written against toklip 0.1."""

import warnings

from toklip.model.loading import (  # noqa: F401
    _optional_keys as _optional_toklip_keys,
    convert_official,
    load_official,
    materialize_missing,
)
from toklip.weights.official import (  # noqa: F401
    OFFICIAL_PREFIXES,
    OPTIONAL_OFFICIAL_KEYS,
    infer_preset,
    official_state_to_toklip,
    official_to_toklip_key,
    toklip_to_official_key,
)
from toklip.weights.readers import load_state_dict_strict, read_checkpoint, unwrap_state_dict  # noqa: F401
from toklip.weights.torch_pickle import SAFE_GLOBALS  # noqa: F401

warnings.warn("toklip.checkpoints moved to toklip.weights (readers) and toklip.model.loading (load_official); "
              "import from there (the old path will be removed in toklip 0.3)", DeprecationWarning, stacklevel=2)
