"""Keep only the files of the chosen component kind."""

from pathlib import Path

KIND = "{{ cookiecutter.component_kind }}"
package = Path("src") / "{{ cookiecutter.package_name }}"

if KIND == "preset":
    (package / "model.py").unlink()
else:
    for preset in package.glob("*.json"):
        preset.unlink()
