"""The contract every registered component meets, from toklip's kit: the kind's conformance check on each
``*-test`` name (``triton-test``, ``mlp-fused-test``) and a meta-device build of every projector name."""

from toklip.testing.contract import test_builds_on_meta, test_conforms  # noqa: F401
