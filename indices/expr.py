"""A small safe evaluator for index formulas: arithmetic over named operands, nothing else.

A formula such as ``g * (nir - red) / (nir + C1 * red - C2 * blue + L)`` is parsed with
:mod:`ast` and only these nodes are accepted: numbers, names, the binary operators
``+ - * / **``, unary ``-`` and ``+`` (parentheses are just grouping in the tree). Calls,
attribute access, subscripts, comparisons, lambdas, strings and everything else are refused
with :class:`FormulaError` before anything is evaluated. Nothing is passed to ``eval`` or
``compile``: the tree is walked by :func:`evaluate` itself.

Operands can be Python numbers, numpy arrays, dask arrays or xarray DataArrays; the operators
are the operands' own, so dask stays lazy and xarray keeps its coordinates. Division by zero
gives NaN, never ``inf``: the denominator is replaced by NaN where it is 0 before dividing.
"""
from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import xarray as xr

from pipeline.errors import ConfigError

__all__ = ["FormulaError", "evaluate", "names_in", "parse", "safe_divide", "safe_power"]


class FormulaError(ConfigError):
    """An index formula uses syntax the evaluator does not allow, or an unknown name."""


def safe_divide(num: Any, den: Any) -> Any:
    """``num / den`` with NaN (not inf) where ``den`` is 0 (numbers, numpy, dask, xarray)."""
    if isinstance(den, xr.DataArray):
        return num / den.where(den != 0)
    if isinstance(den, (int, float, np.number)) and not isinstance(den, bool):
        if den == 0:
            return num * np.nan if not isinstance(num, (int, float)) else float("nan")
        return num / den
    # numpy and dask arrays: np.where dispatches to dask.array.where via __array_function__.
    dtype = getattr(den, "dtype", np.dtype("float64"))
    fill = np.array(np.nan, dtype=dtype if np.issubdtype(dtype, np.floating) else np.float64)
    return num / np.where(den != 0, den, fill)


def safe_power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``; with plain numbers, 0 ** -x and overflow give NaN, not an exception.

    Arrays follow numpy/dask/xarray rules (a negative base to a fractional power is NaN).
    """
    try:
        return base ** exponent
    except (ZeroDivisionError, OverflowError):
        return float("nan")


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: safe_divide,
    ast.Pow: safe_power,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _check(node: ast.AST, formula: str) -> None:
    """Refuse any node that is not a number, a name or allowed arithmetic."""
    if isinstance(node, ast.Expression):
        _check(node.body, formula)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise FormulaError(
                f"formula {formula!r}: operator {type(node.op).__name__} is not allowed; "
                "use only + - * / **"
            )
        _check(node.left, formula)
        _check(node.right, formula)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise FormulaError(
                f"formula {formula!r}: unary {type(node.op).__name__} is not allowed; use only -x"
            )
        _check(node.operand, formula)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise FormulaError(f"formula {formula!r}: constant {node.value!r} is not a number")
    elif isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise FormulaError(f"formula {formula!r}: name {node.id!r} is not allowed")
    else:
        raise FormulaError(
            f"formula {formula!r}: {type(node).__name__} is not allowed; formulas may use only "
            "numbers, band and constant names, + - * / ** and parentheses"
        )


@lru_cache(maxsize=512)
def parse(formula: str) -> ast.Expression:
    """Parse and check ``formula``; raise :class:`FormulaError` on anything not allowed."""
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError(f"formula {formula!r} is empty; write an arithmetic expression")
    if len(formula) > 2000:
        raise FormulaError("formula is longer than 2000 characters; shorten it")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
        _check(tree, formula)
    except SyntaxError as exc:
        raise FormulaError(f"formula {formula!r} is not valid arithmetic: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise FormulaError("formula is nested too deeply; simplify it") from None
    return tree


def names_in(formula: str) -> frozenset[str]:
    """The names (bands and constants) a formula uses."""
    return frozenset(n.id for n in ast.walk(parse(formula)) if isinstance(n, ast.Name))


def _eval(node: ast.AST, env: Mapping[str, Any], formula: str) -> Any:
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, env, formula),
                                      _eval(node.right, env, formula))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env, formula))
    if isinstance(node, ast.Constant):
        value = node.value
        assert isinstance(value, (int, float))  # guaranteed by _check
        return float(value)  # never Python ints: 9 ** 9 ** 9 must not become a bignum
    if isinstance(node, ast.Name):
        try:
            return env[node.id]
        except KeyError:
            raise FormulaError(
                f"formula {formula!r}: name {node.id!r} has no value; "
                f"known names are {sorted(env)}"
            ) from None
    raise FormulaError(f"formula {formula!r}: {type(node).__name__} is not allowed")


def evaluate(formula: str, env: Mapping[str, Any]) -> Any:
    """Evaluate ``formula`` with the operands in ``env`` (name -> number or array)."""
    tree = parse(formula)
    try:
        return _eval(tree.body, env, formula)
    except RecursionError:
        raise FormulaError("formula is nested too deeply; simplify it") from None
