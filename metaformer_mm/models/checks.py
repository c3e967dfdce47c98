"""Argument checks of the backbones and mixers: one error naming the argument, the value and
what is allowed, raised when the model is built."""
import math
from numbers import Integral, Real
from typing import Any, Optional


class ArgumentError(ValueError, TypeError):
    """A bad backbone or mixer argument: a ``ValueError`` and a ``TypeError``, for either catch."""


def is_int(value: Any) -> bool:
    """An integer, not a bool (``True`` would otherwise count as 1)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def fail(owner: str, name: str, wanted: str, value: Any, kind: str = '') -> None:
    """Raises ``OWNER: NAME must be WANTED, got VALUE``, with ``(a TYPE; KIND is needed)`` when
    the type is what is wrong."""
    note = f' (a {type(value).__name__}; {kind} is needed)' if kind else ''
    raise ArgumentError(f'{owner}: {name} must be {wanted}, got {value!r}{note}')


def check_bool(owner: str, name: str, value: Any) -> None:
    """True or False; a string such as ``'false'`` would count as true."""
    if not isinstance(value, bool):
        fail(owner, name, 'True or False', value, kind='a bool')


def check_int(owner: str, name: str, value: Any, lo: Optional[int] = None,
              hi: Optional[int] = None, odd: bool = False, optional: bool = False,
              wanted: Optional[str] = None) -> None:
    """An integer in ``lo..hi`` (None: open), odd with ``odd``, None allowed with ``optional``."""
    if optional and value is None:
        return
    if wanted is None:
        what = 'odd integer' if odd else 'integer'
        wanted = (f'a positive {what}' if lo == 1 and hi is None
                  else f'an {what} in {lo}..{hi}' if lo is not None and hi is not None
                  else f'an {what} >= {lo}' if lo is not None else f'an {what}')
        wanted += ' or None' if optional else ''
    if not is_int(value):
        fail(owner, name, wanted, value, kind='an integer')
    if (lo is not None and value < lo) or (hi is not None and value > hi) or \
            (odd and value % 2 == 0):
        fail(owner, name, wanted, value)


def check_number(owner: str, name: str, value: Any, lo: Optional[float] = None,
                 hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False,
                 optional: bool = False, wanted: Optional[str] = None) -> None:
    """A finite number in ``lo..hi`` (``*_open``: exclusive), None allowed with ``optional``."""
    if optional and value is None:
        return
    if wanted is None:
        if lo is not None and hi is not None:
            wanted = f'in {"(" if lo_open else "["}{lo}, {hi}{")" if hi_open else "]"}'
        elif lo is not None:
            wanted = f'a finite number {">" if lo_open else ">="} {lo}'
        else:
            wanted = 'a finite number'
        wanted += ' or None' if optional else ''
    if not isinstance(value, Real) or isinstance(value, bool):
        fail(owner, name, wanted, value, kind='a number')
    if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) \
            or (hi is not None and (value >= hi if hi_open else value > hi)):
        fail(owner, name, wanted, value)
