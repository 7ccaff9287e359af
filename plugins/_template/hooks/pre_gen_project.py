"""Refuse names toklip would reject, before anything is written: toklip's own name rule and the names its builtins
reserve, both read from toklip's registry (so this list never goes stale)."""

import re
import sys

NAME = "{{ cookiecutter.component_name }}"
PACKAGE = "{{ cookiecutter.package_name }}"
KIND = "{{ cookiecutter.component_kind }}"


def fail(message: str) -> None:
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(1)


if not re.fullmatch(r"[a-z][a-z0-9-]*", NAME) or not PACKAGE.isidentifier():
    fail(f"plugin name {NAME!r} is not usable: use lowercase letters, digits and '-', starting with a letter "
         "(it names the component, the distribution and the import package, which must be a Python identifier)")
FIELDS = {"description": {{ cookiecutter.description|jsonify }}, "author_name": {{ cookiecutter.author_name|jsonify }}}
for field, value in FIELDS.items():
    if any(ch in value for ch in '"\\\n'):
        fail(f"{field} must not contain double quotes, backslashes or newlines")

try:
    from toklip.core.host import PluginHost
    from toklip.core.registry import NAME_RE
except ImportError:
    print("WARNING: toklip is not importable here, so the names are not checked against its builtins; "
          "run cookiecutter in the environment where toklip is installed", file=sys.stderr)
else:
    builtin = PluginHost(autoload=False).registries(with_plugins=False)[KIND]
    for name in (NAME, NAME + "-test"):
        if not NAME_RE.match(name):
            fail(f"{name!r} does not follow toklip's component name rule {NAME_RE.pattern}")
        if name in builtin:
            fail(f"{name!r} is a {KIND} name reserved by toklip's builtins; pick another plugin name")
