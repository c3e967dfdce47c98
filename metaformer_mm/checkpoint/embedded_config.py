"""Configs embedded in checkpoints: accepted only when reading them cannot run code.

mmengine's Runner stores the config's text in ``meta['cfg']`` (and mmengine's inferencers
also look in ``message_hub['runtime_info']['cfg']``); ``DetInferencer(model=None,
weights=...)`` and ``MMSegInferencer`` rebuild the model from it with
``Config.fromstring``, which *executes* the text as Python. ``weights_only=True`` does not
help: the text is a plain string. A config that mmengine wrote (``Config.pretty_text``) is
assignments of literals and ``dict(...)`` calls; anything else is refused here.
"""
import ast
from typing import Any, List, Optional, Tuple

from .io import CheckpointError

_WHERE = (('meta', 'cfg'), ('message_hub', 'runtime_info', 'cfg'))


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


def config_text_problem(text: str) -> Optional[str]:
    """Why running config ``text`` could execute code (e.g. "a call of __import__ at line 1"),
    or None when it is assignments of literals only."""
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
                continue
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
    if isinstance(node, ast.stmt):
        return f'a statement other than NAME = LITERAL ({type(node).__name__})'
    return f'an expression that is not a literal ({type(node).__name__})'


def embedded_configs(obj: Any) -> List[Tuple[str, Any]]:
    """``(where, text)`` of every config string a loaded checkpoint carries."""
    found = []
    for path in _WHERE:
        value = obj
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            found.append(('.'.join(path), value))
    return found


def check_embedded_config(obj: Any, path: str) -> None:
    """Refuses a checkpoint whose embedded config would run code when an inferencer reads it."""
    for where, text in embedded_configs(obj):
        problem = ('it is not a string' if not isinstance(text, str)
                   else config_text_problem(text))
        if problem:
            raise CheckpointError(
                f'refused to load {path}: its embedded config ({where}) is not plain literals '
                f'({problem}), and mmengine\'s inferencers execute that text as Python when no '
                f'config is given. Give the config file or model name, and load a copy without '
                f'the embedded config: python tools/convert_checkpoint.py {path} CLEAN.pth')
