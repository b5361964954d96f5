"""Each package imports only its own backend: numpyroflows never imports torch, pyroflows never JAX, and the shared
``flowcommon`` neither. Checked in a fresh interpreter where the other backend cannot be imported at all (its entry in
``sys.modules`` is None, so any ``import`` of it raises), importing every submodule of the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = """
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None
for root in {roots!r}:
    pkg = importlib.import_module(root)
    for info in pkgutil.walk_packages(pkg.__path__, root + "."):
        importlib.import_module(info.name)
print("imported", sorted(m for m in sys.modules if m.split(".")[0] in {roots!r}).__len__())
"""


@pytest.mark.parametrize(("roots", "blocked", "needs"), [
    (["numpyroflows", "flowcommon"], ["torch", "pyro"], "jax"),
    (["pyroflows", "flowcommon"], ["jax", "jaxlib", "numpyro", "optax"], "torch"),
    (["flowcommon"], ["torch", "pyro", "jax", "jaxlib", "numpyro", "optax"], "numpy"),
])
def test_package_imports_without_the_other_backend(roots, blocked, needs):
    pytest.importorskip(needs, reason=f"{roots[0]} needs {needs}")
    script = _SCRIPT.format(blocked=blocked, roots=roots)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("imported")


def test_a_planted_import_is_caught(tmp_path):
    """The check itself works: a module that imports a blocked backend fails to import."""
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "__init__.py").write_text("")
    (tmp_path / "planted" / "bad.py").write_text("import torch\n")
    script = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + _SCRIPT.format(blocked=["torch"],
                                                                                      roots=["planted"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "torch" in result.stderr
