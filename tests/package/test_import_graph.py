"""The package's import graph: no cycle (imports inside functions counted), and the model
never imports the acceleration layer that imports it."""
import ast
import os
import os.path as osp
from typing import Dict, List, Set

PACKAGE = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'metaformer_mm')


def _modules() -> Dict[str, str]:
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(folder, name)
                dotted = osp.relpath(path[:-3], osp.dirname(PACKAGE)).replace(os.sep, '.')
                modules[dotted.removesuffix('.__init__')] = path
    return modules


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports anywhere in its text (functions too).
    ``from .pkg import name`` counts as an import of ``pkg.name`` where that is a module,
    else of ``pkg``; parent packages imported on the way are not counted."""
    modules = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                    base = '.'.join(parts + ([base] if base else []))
                targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base
                           for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t in modules and t != module)
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    state: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    cycles = _cycles(import_graph())
    assert not cycles, ' ; '.join(' -> '.join(c) for c in cycles)


def test_the_model_never_imports_the_acceleration_layer():
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t.startswith('metaformer_mm.accel'))
                 for m, targets in graph.items() if m.startswith('metaformer_mm.models')}
    assert not any(offenders.values()), {m: t for m, t in offenders.items() if t}
    assert any(t.startswith('metaformer_mm.models') for t in graph['metaformer_mm.accel.blocks'])


def test_the_graph_sees_imports_inside_functions():
    """The checker itself: a function-level import is an edge."""
    graph = import_graph()
    # MetaFormer.init_weights imports the checkpoint package inside the method.
    assert 'metaformer_mm.checkpoint' in graph['metaformer_mm.models.backbones.metaformer']
    assert _cycles({'a': {'b'}, 'b': {'a'}}) == [['a', 'b', 'a']]
