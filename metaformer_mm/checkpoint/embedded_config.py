"""Configs embedded in checkpoints (``meta.cfg``, ``message_hub.runtime_info.cfg``): data only.

Given weights but no config, mmengine's inferencers rebuild the model with
``Config.fromstring``, which executes the text, imports ``custom_imports`` and scopes, reads
``_base_`` files and substitutes ``{{ }}``; ``weights_only`` does not cover a string. So an
embedded config may only assign literals and ``dict(...)``, with ``custom_imports`` and scopes
of modules already loaded. It is checked when read (:func:`guard_embedded_configs`); texts
over :data:`MAX_CONFIG_CHARS` are refused unparsed."""
import ast
from typing import Any, Iterator, List, Optional, Tuple

from .io import CheckpointError

_WHERE = (('meta',), ('message_hub', 'runtime_info'))
# mmengine's inferencers read 'cfg'; Runner.resume executes mmdet 2.x's meta['config'].
_CONFIG_KEYS = ('cfg', 'config')
# A config's pretty_text is a few kB (this project's largest: about 12 kB); parsing costs
# several hundred times the text's size in memory, so longer texts are refused unparsed.
MAX_CONFIG_CHARS = 1 << 18  # 256 Ki characters: at most about 100 MB to parse
# Top-level names through which mmengine reads files or warns (``custom_imports`` is
# allowed only for modules already loaded: see ``_imports_problem``).
_ACTIVE_NAMES = {'_base_': 'makes mmengine read (and execute) other config files',
                 '_deprecation_': 'is mmengine\'s deprecation notice, not data',
                 'filename': 'is reserved by mmengine', 'text': 'is reserved by mmengine',
                 'pretty_text': 'is reserved by mmengine',
                 'env_variables': 'is reserved by mmengine'}
_SCOPE_KEYS = ('default_scope', '_scope_')


def _loaded(module: str) -> bool:
    """Whether importing ``module`` runs no new code: imported already, or part of an
    imported OpenMMLab library or this project."""
    import sys

    from mmengine.config.utils import MODULE2PACKAGE
    top = module.split('.')[0]
    known = {*MODULE2PACKAGE, 'mmengine', 'mmcv', 'metaformer_mm'}
    return module in sys.modules or (top in known and top in sys.modules)


def _literal_problem(node: ast.AST) -> Optional[ast.AST]:
    """The first node of an expression that is not a literal (or ``dict(k=literal)``)."""
    if isinstance(node, ast.Constant):
        return None
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return next(filter(None, map(_literal_problem, node.elts)), None)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):  # ``{**other}``
            return node
        return next(filter(None, map(_literal_problem, [*node.keys, *node.values])), None)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant):
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == 'dict' and not node.args \
            and all(kw.arg is not None for kw in node.keywords):
        return next(filter(None, (_literal_problem(kw.value) for kw in node.keywords)), None)
    return node


def _items(node: ast.AST) -> Iterator[Tuple[str, ast.AST]]:
    """Every ``(key, value node)`` of the dicts in a literal expression, at any depth."""
    pairs: List[Tuple[Any, ast.AST]] = []
    if isinstance(node, ast.Call):  # dict(k=v)
        pairs = [(kw.arg, kw.value) for kw in node.keywords]
    elif isinstance(node, ast.Dict):
        pairs = [(k.value if isinstance(k, ast.Constant) else None, v)
                 for k, v in zip(node.keys, node.values)]
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        for elt in node.elts:
            yield from _items(elt)
    for key, value in pairs:
        if isinstance(key, str):
            yield key, value
        yield from _items(value)


def _imports_problem(node: ast.AST) -> Optional[str]:
    """Why ``custom_imports = node`` would import a module not loaded yet, or None."""
    imports = next((v for k, v in _items(node) if k == 'imports'), None)
    names = [imports] if isinstance(imports, ast.Constant) else getattr(imports, 'elts', None)
    if names is None or not all(isinstance(n, ast.Constant) and isinstance(n.value, str)
                                for n in names):
        return f"'custom_imports' at line {node.lineno}, which does not list module names"
    new = [n.value for n in names if not _loaded(n.value)]
    if new:
        return (f"'custom_imports' at line {node.lineno}, which makes mmengine import "
                f'{new} (not loaded by this program: running them would run their code)')
    return None


def _data_problem(name: str, value: ast.AST) -> Optional[str]:
    """Why the literal assignment ``name = value`` would make mmengine act, or None."""
    line = f'at line {value.lineno}'
    if name in _ACTIVE_NAMES or name.startswith(('_base_', '__')):
        why = _ACTIVE_NAMES.get(name, 'is mmengine\'s base-config key'
                                if name.startswith('_base_') else 'is not a config key')
        return f'{name!r} {line}, which {why}'
    for key, node in [(name, value), *_items(value)]:
        text = node.value if isinstance(node, ast.Constant) else None
        if key == 'custom_imports':
            problem = _imports_problem(node)
            if problem:
                return problem
        scope = None
        if key in _SCOPE_KEYS and isinstance(text, str):
            scope = text
        elif key == 'type' and isinstance(text, str) and '.' in text:
            scope = text.split('.', 1)[0]
        if scope is not None and not _loaded(f'{scope}.registry'):
            return (f'{key}={text!r} at line {node.lineno}, whose scope {scope!r} makes '
                    f'mmengine import {scope}.registry (not a library loaded by this program)')
    return None


def config_text_problem(text: str) -> Optional[str]:
    """Why reading config ``text`` with ``Config.fromstring`` could run code, import, read a
    file or substitute the environment, or None."""
    if len(text) > MAX_CONFIG_CHARS:
        return (f'it is {len(text)} characters long, more than the {MAX_CONFIG_CHARS} an '
                f'embedded config is checked up to (not parsed)')
    at = text.find('{{')
    if at >= 0:  # substituted in the raw text, comments included
        return (f'a {{{{ }}}} placeholder at line {text.count(chr(10), 0, at) + 1}, which '
                f'mmengine substitutes (environment variables, base-config values)')
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        return f'it is not valid Python ({err.msg}, line {err.lineno})'
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring or a bare literal
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            bad = _literal_problem(stmt.value)
            if bad is None:
                problem = next(filter(None, (_data_problem(t.id, stmt.value)
                                             for t in stmt.targets)), None)
                if problem is None:
                    continue
                return problem
        else:
            bad = stmt.value if isinstance(stmt, ast.Expr) else stmt
        return f'{_describe(bad)} at line {getattr(bad, "lineno", "?")}'
    return None


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        try:
            return f'a call of {ast.unparse(node.func)}'
        except Exception:  # noqa: BLE001 -- only wording
            return 'a call'
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return 'an import'
    if isinstance(node, ast.With):
        return 'a with statement (mmengine\'s read_base imports)'
    if isinstance(node, ast.stmt):
        return f'a statement other than NAME = LITERAL ({type(node).__name__})'
    return f'an expression that is not a literal ({type(node).__name__})'


def check_config_text(text: Any, path: str, where: str) -> None:
    """Refuses the embedded config ``text`` (at ``where`` in ``path``) unless it is data only."""
    problem = 'it is not a string' if not isinstance(text, str) else config_text_problem(text)
    if problem:
        raise CheckpointError(
            f'refused to read the config embedded in {path} ({where}): {problem}. An '
            f'embedded config may only give data (literals), since mmengine\'s inferencers '
            f'execute it when no config is given. Pass the config file (or model name) '
            f'explicitly: DetInferencer(model=CONFIG, weights=...), MMSegInferencer('
            f'model=CONFIG, weights=...), init_detector(CONFIG, ...); or write a copy '
            f'without it: python tools/convert_checkpoint.py {path} CLEAN.pth')


class _CheckedOnRead(dict):
    """A checkpoint's ``meta`` (or ``runtime_info``) whose config text is checked when read."""

    def __init__(self, data: dict, path: str, where: str) -> None:
        super().__init__(data)
        self._source = (path, where)

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if key in _CONFIG_KEYS:
            check_config_text(value, self._source[0], f'{self._source[1]}.{key}')
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __reduce__(self) -> tuple:  # saved again, it is a plain dict
        return dict, (dict(self.items()),)


def guard_embedded_configs(obj: Any, path: str) -> None:
    """Makes every config embedded in ``obj`` (read from ``path``) checked when read;
    nothing is parsed now."""
    for keys in _WHERE:
        holder, parent, last = obj, None, None
        for key in keys:
            parent, last = holder, key
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and any(k in holder for k in _CONFIG_KEYS) \
                and isinstance(parent, dict):
            parent[last] = _CheckedOnRead(holder, path, '.'.join(keys))
