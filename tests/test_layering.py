"""The package's layering (DESIGN.md, "Layout"), checked from the source.

Every ``.py`` file of the distribution is mapped to its module name through pyproject's
``[tool.setuptools.package-dir]`` and parsed with ``ast``; every import counts, at the top of a
module or inside a function, and so does a string that names a dqcodec module (what
``importlib.import_module`` is handed). The rules:

- ``models`` imports nothing from ``codec``, ``train`` or ``eval``;
- ``codec`` imports nothing from ``train`` or ``eval``, except the CLI face ``codec/cli.py``;
- ``eval`` outside ``eval/studies`` imports nothing from ``train``;
- nothing but the CLI face (and the studies themselves) imports ``eval.studies``.
"""

import ast
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML parser
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CLI_FACE = "dqcodec.codec.cli"
STUDIES = "dqcodec.eval.studies"
MODULE_NAME = re.compile(r"dqcodec(\.\w+)+")


def _package_dirs() -> dict[str, Path]:
    """Package name -> its folder, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {package: ROOT / folder for package, folder in config["tool"]["setuptools"]["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of every package (a file belongs to the package
    whose folder is the deepest one that holds it)."""
    packages = _package_dirs()
    modules = {}
    for package, folder in packages.items():
        for path in folder.rglob("*.py"):
            owner = max((p for p, f in packages.items() if path.is_relative_to(f)), key=lambda p: len(packages[p].parts))
            if owner != package:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path) -> set[str]:
    """Dotted names a module imports (for ``from a import b``: ``a.b``)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parent + ([base] if base else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            found.add(node.value)
    return {imported for imported in found if imported == "dqcodec" or imported.startswith("dqcodec.")}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(modules: dict[str, Path]) -> list[str]:
    """One line per forbidden import (or unparsable file) of ``modules`` (name -> file)."""
    problems = []
    for name, path in sorted(modules.items()):
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        try:
            imports = _imports(name, path)
        except SyntaxError as error:
            problems.append(f"{where} does not parse: {error}")
            continue
        for imported in sorted(imports):
            if _within(name, "dqcodec.models"):
                forbidden = ("dqcodec.codec", "dqcodec.train", "dqcodec.eval")
            elif _within(name, "dqcodec.codec") and name != CLI_FACE:
                forbidden = ("dqcodec.train", "dqcodec.eval")
            elif _within(name, "dqcodec.eval") and not _within(name, STUDIES):
                forbidden = ("dqcodec.train",)
            else:
                forbidden = ()
            if not (name == CLI_FACE or _within(name, STUDIES)):
                forbidden += (STUDIES,)
            hit = next((package for package in forbidden if _within(imported, package)), None)
            if hit is not None:
                problems.append(f"{where} imports {imported} ({name} may not import {hit})")
    return problems


def test_the_source_is_mapped_to_every_package():
    modules = _modules()
    for package in _package_dirs():
        assert package in modules, f"{package} has no __init__.py"
    assert {"dqcodec.models.quantizers", "dqcodec.eval.studies.static_prior", CLI_FACE} <= set(modules)
    assert modules["dqcodec.eval.studies.static_prior"] == ROOT / "eval" / "studies" / "static_prior.py"


def test_imports_are_found_wherever_they_are(tmp_path):
    source = '''
import dqcodec.train.loop
from dqcodec.eval import studies
def later():
    from . import metrics
    from ..train.data import load_rgb
    return importlib.import_module("dqcodec.train.commands")
'''
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports("dqcodec.eval.probe", path) == {
        "dqcodec.train.loop", "dqcodec.eval.studies", "dqcodec.eval.metrics",
        "dqcodec.train.data.load_rgb", "dqcodec.train.commands",
    }


def test_forbidden_imports_are_reported(tmp_path):
    sources = {
        "dqcodec.models.bad": "def f():\n    from dqcodec.train.loop import train\n",
        "dqcodec.codec.api": "import dqcodec.eval.metrics\n",
        "dqcodec.codec.cli": "COMMANDS = {'study': 'dqcodec.eval.studies.commands'}\nimport dqcodec.train\n",
        "dqcodec.eval.rd": "from dqcodec.train import data\nfrom dqcodec.eval.studies import report\n",
        "dqcodec.eval.studies.fit": "from dqcodec.train.initialize import ecvq_codebooks\n",
        "dqcodec.train.loop": "from dqcodec.eval.metrics import psnr\n",
    }
    modules = {}
    for name, source in sources.items():
        modules[name] = tmp_path / f"{name}.py"
        modules[name].write_text(source)
    reported = [line.split(" (")[0].rsplit(" imports ", 1) for line in _violations(modules)]
    assert [(Path(path).stem, imported) for path, imported in reported] == [
        ("dqcodec.codec.api", "dqcodec.eval.metrics"),
        ("dqcodec.eval.rd", "dqcodec.eval.studies.report"),
        ("dqcodec.eval.rd", "dqcodec.train.data"),
        ("dqcodec.models.bad", "dqcodec.train.loop.train"),
    ]


def test_each_layer_imports_only_what_it_may():
    problems = _violations(_modules())
    assert not problems, "layering violations:\n" + "\n".join(problems)
