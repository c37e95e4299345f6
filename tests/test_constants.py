"""Every key the package writes to an AnnData is a name from genohoption._constants, not a literal."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "genohoption"
ATTRS = {"obs", "var", "obsm", "varm", "obsp", "varp", "layers", "uns"}


def _literal_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
        for target in targets:
            if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute)
                    and target.value.attr in ATTRS and isinstance(target.slice, ast.Constant)
                    and isinstance(target.slice.value, str)):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {target.value.attr}[{target.slice.value!r}]")
    return found


def test_no_literal_adata_keys_in_writes():
    writes = [w for path in sorted(SRC.rglob("*.py")) if path.name != "_constants.py" for w in _literal_writes(path)]
    assert not writes, f"define these keys in _constants.py: {writes}"


def test_constants_are_unique_strings():
    from genohoption import _constants as K

    keys = {name: value for name, value in vars(K).items() if name.isupper() and isinstance(value, str)}
    assert len(set(keys.values())) == len(keys), keys


def test_constants_defined_once():
    """No module assigns a module-level name of _constants (a second BACKBONES drifts from the first)."""
    from genohoption import _constants as K

    names = {name for name in vars(K) if name.isupper()}
    redefined = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "_constants.py":
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            redefined += [f"{path.relative_to(SRC)}:{node.lineno} {t.id}" for t in targets
                          if isinstance(t, ast.Name) and t.id in names]
    assert not redefined, f"import these from genohoption._constants instead: {redefined}"
