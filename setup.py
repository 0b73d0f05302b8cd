"""Build hook: the top-level ``message_templates/`` folder ships inside the package.

The templates live at the top of the repository (where their authors look for them); a wheel
and an sdist-built wheel carry them as ``bot/message_templates/``, which
:func:`bot.domain.rendering.packaged_templates` finds with ``importlib.resources``. An
editable checkout reads them in place, so there is no copy to keep in step and no symlink.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATES = Path(__file__).resolve().parent / "message_templates"
SUFFIXES = {".j2", ".yaml", ".md"}


class BuildWithTemplates(build_py):
    """``build_py`` that also copies ``message_templates/`` into ``bot/message_templates/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the code reads message_templates/ from the checkout itself
        target = Path(self.build_lib, "bot", "message_templates")
        for source in sorted(TEMPLATES.rglob("*")):
            if source.is_file() and source.suffix in SUFFIXES:
                destination = target / source.relative_to(TEMPLATES)
                self.mkpath(str(destination.parent))
                self.copy_file(str(source), str(destination))


setup(cmdclass={"build_py": BuildWithTemplates})
