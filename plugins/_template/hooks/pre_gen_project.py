"""Refuse names toklip would reject, before anything is written."""

import re
import sys

NAME = "{{ cookiecutter.component_name }}"
PACKAGE = "{{ cookiecutter.package_name }}"

if not re.fullmatch(r"[a-z][a-z0-9-]*", NAME) or not PACKAGE.isidentifier():
    print(
        f"ERROR: plugin name {NAME!r} is not usable: use lowercase letters, digits and '-', starting with a letter "
        "(toklip component names follow [a-z0-9][a-z0-9_.-]*, and the import package must be a Python identifier)",
        file=sys.stderr,
    )
    sys.exit(1)
FIELDS = {"description": {{ cookiecutter.description|jsonify }}, "author_name": {{ cookiecutter.author_name|jsonify }}}
for field, value in FIELDS.items():
    if any(ch in value for ch in '"\\\n'):
        print(f"ERROR: {field} must not contain double quotes, backslashes or newlines", file=sys.stderr)
        sys.exit(1)
if NAME in {"llamagen", "siglip2", "mlp", "codebook", "identity", "causal", "bidirectional", "sdpa", "eager"}:
    print(f"ERROR: {NAME!r} is a name reserved by toklip's builtins; pick another", file=sys.stderr)
    sys.exit(1)
