"""The architecture as the folders show it: each package of provisioner/ imports only
packages of the layers below its own (never sideways, never back up). A newcomer reads
where a change belongs from this list; an import against it fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "provisioner"

# Top to bottom.
LAYERS = [
    {"__main__"},  # python -m provisioner
    {"cli"},  # the command line
    {"app"},  # the service put together
    {"api", "workers"},  # HTTP in; the loops that carry out side effects after commit
    {"web"},  # the confirmation pages
    {"service"},  # what a button does, one transaction each
    {"apply", "router", "mail"},  # the apply round; the router step; the mail out
    {"asterisk", "render"},  # the adapter to Asterisk (AMI, files); config from views
    {"db", "settings", "metrics", "clock"},  # SQL; the settings; counters; time
    {"domain"},  # rules and values, no I/O
]


def _layer(package: str) -> int:
    for depth, names in enumerate(LAYERS):
        if package in names:
            return depth
    raise AssertionError(f"provisioner/{package} is in no layer of tests/test_layers.py")


def _imports() -> list[tuple[str, str, str]]:
    """(importing file, its package, the imported package) for every provisioner import."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        package = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "provisioner":
                    targets = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names
                           if a.name.startswith("provisioner.")]  # fmt: skip
            found += [(str(path.relative_to(PACKAGE)), package, t) for t in targets]
    return found


def test_every_package_is_in_a_layer() -> None:
    packages = [p.name.removesuffix(".py") for p in PACKAGE.iterdir()
                if p.suffix == ".py" or (p / "__init__.py").exists()]  # fmt: skip
    for package in set(packages) - {"__init__"}:
        _layer(package)


def test_imports_only_go_down() -> None:
    against = [
        f"{where} ({package}) imports provisioner.{target}"
        for where, package, target in _imports()
        if target != package and _layer(target) <= _layer(package)
    ]
    assert not against, "\n".join(against)


def test_the_round_touches_the_database_only_through_its_reads_and_writes() -> None:
    """apply/round.py reads by apply/reads.py and writes by apply/record.py; from db/ it
    takes only types (the rows it works on)."""
    tree = ast.parse((PACKAGE / "apply" / "round.py").read_text())
    from_db = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("provisioner.db")
    ]
    for node in from_db:
        assert node.module != "provisioner.db", "round.py imports db modules"
        assert all(a.name[:1].isupper() for a in node.names), ast.unparse(node)
    assert "pool.connection" not in ast.unparse(tree)
