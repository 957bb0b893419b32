"""The Bicep evaluator the infra tests share (a helper module: the tests are in test_infra*.py).

No Bicep compiler can run here. ``pycep`` (pycep-parser) parses every file; ``Template`` computes the values the
checks need (app settings, the inline REPLICATOR_CONFIG, identity, roles, names) from the parse tree, with parameter
values chosen by each test and runtime values (resource ids, module outputs) kept symbolic as ``Ref``. ``fail()``
raises ``BicepFail``. The evaluator knows only the expression forms these templates use and fails loudly on anything
else, so a template change it does not understand breaks the tests instead of passing silently.

pycep's grammar gets some precedences wrong (``!a && b`` parses as ``!(a && b)``, ``a.?b ?? c`` as ``a.?(b ?? c)``,
``f(x) > 1 ? y : z`` as ``f(x) > (1 ? y : z)``), so the templates parenthesise such operands; the parse then matches
Bicep's.
"""

from __future__ import annotations

import hashlib
import json
import typing
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from lark import Token, Tree
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
TENANT = "11111111-1111-1111-1111-111111111111"  # what tenant() returns
# Bound while a user-defined function's body is evaluated: Bicep lets it read its parameters only.
_FUNCTION_SCOPE = "<function>"

CLIENT_ID = "22222222-2222-2222-2222-222222222222"
PRINCIPAL_ID = "33333333-3333-3333-3333-333333333333"
SOURCE_URI = "mongodb+srv://source.global.mongocluster.cosmos.azure.com/"
# main.bicep's module outputs, as Azure would return them (only names and ids: nothing secret).
MODULE_OUTPUTS = {
    "identity": {"outputs": {"name": "id-test", "clientId": CLIENT_ID, "principalId": PRINCIPAL_ID}},
    "storage": {"outputs": {"name": "sttest", "deploymentContainerName": "app-package-test", "queueName": "q-test"}},
    "monitoring": {"outputs": {"applicationInsightsName": "appi-test", "logAnalyticsId": "<log-analytics-id>"}},
}


class BicepFail(Exception):  # noqa: N818 - named for the Bicep function it stands for
    """``fail(message)`` was evaluated: the deployment would stop with this message."""


class ParameterRejected(Exception):  # noqa: N818 - what ARM does to the value
    """A given parameter value breaks the parameter's @minLength, @maxLength, @minValue, @maxValue or @allowed."""


class Ref(str):
    """A value only Azure knows (a resource id, a module output); it prints as ``<path>``."""

    def __new__(cls, path: str) -> Ref:
        ref = super().__new__(cls, f"<{path}>")
        ref.path = path
        return ref

    path: str


class Template:
    """One .bicep file: its declarations, and an evaluator for them under chosen parameter values."""

    def __init__(self, path: Path, params: Mapping[str, Any] | None = None, symbols: Mapping[str, Any] | None = None):
        self.path = path
        self.tree = parser().lark_parser.parse(path.read_text(encoding="utf-8"))
        kinds = ("param", "var", "resource", "module", "output", "custom_func")
        self.decls: dict[str, dict[str, Tree[Any]]] = {k: {} for k in kinds}
        for element in self.tree.children:
            if isinstance(element, Tree) and element.data in self.decls:
                self.decls[str(element.data)][str(element.children[1])] = element
        self.given = dict(params or {})
        self.symbols = dict(symbols or {})
        self._vars: dict[str, Any] = {}

    # -- declarations

    def decorators(self, name: str) -> set[str]:
        decorators = self.decls["param"][name].children[0]
        return {str(d.children[0]) for d in decorators.children} if isinstance(decorators, Tree) else set()

    def decorator_value(self, name: str, decorator: str) -> Any:
        """The argument of a parameter's decorator (``@maxLength(60)`` gives 60), or None without it."""
        decorators = self.decls["param"][name].children[0]
        for node in decorators.children if isinstance(decorators, Tree) else []:
            if str(node.children[0]) == decorator:
                return self.ev(node.children[1], {}) if len(node.children) > 1 else True
        return None

    def check_param(self, name: str, value: Any) -> Any:
        """What ARM checks before anything runs: the decorators' bounds and allowed values."""
        rules: dict[str, Callable[[Any], bool]] = {
            "minLength": lambda bound: len(value) >= bound,
            "maxLength": lambda bound: len(value) <= bound,
            "minValue": lambda bound: value >= bound,
            "maxValue": lambda bound: value <= bound,
            "allowed": lambda allowed: value in allowed,
        }
        for decorator, holds in rules.items():
            bound = self.decorator_value(name, decorator)
            if bound is not None and not holds(bound):
                raise ParameterRejected(f"{self.path.name}: {name}={value!r} breaks @{decorator}({bound})")
        return value

    def param_default(self, name: str) -> Tree[Any] | None:
        return typing.cast("Tree[Any] | None", self.decls["param"][name].children[3])

    def body(self, kind: str, name: str) -> Any:
        """The evaluated body of a resource or module (the first item of a loop, the value of a condition)."""
        node = self.decls[kind][name].children[-1]
        if node.data == "deploy_condition":
            node = node.children[1]
        value = self.ev(node, {})
        return value[0] if isinstance(value, list) else value

    def module_param_names(self, name: str) -> set[str]:
        """The parameter names a module declaration passes (read from the tree, nothing evaluated)."""
        node = self.decls["module"][name].children[-1]
        body = node.children[1] if node.data == "deploy_condition" else node
        params = next(p.children[1] for p in body.children if str(p.children[0].children[0]) == "params")
        return {self.key(pair.children[0], {}) for pair in params.children}

    def var(self, name: str) -> Any:
        if name not in self._vars:
            self._vars[name] = self.ev(self.decls["var"][name].children[3], {})
        return self._vars[name]

    # -- evaluation

    def lookup(self, name: str, env: Mapping[str, Any]) -> Any:
        if name in env:
            return env[name]
        if _FUNCTION_SCOPE in env:
            raise KeyError(
                f"{self.path.name}: function {env[_FUNCTION_SCOPE]} reads {name}; Bicep allows its parameters only"
            )
        if name in self.decls["param"]:
            if name in self.given:
                return self.check_param(name, self.given[name])
            default = self.param_default(name)
            if default is None:
                raise KeyError(f"{self.path.name}: parameter {name} has no default and the test gave no value")
            return self.ev(default, {})
        if name in self.decls["var"]:
            return self.var(name)
        if name in self.symbols:
            return self.symbols[name]
        if name in self.decls["resource"] or name in self.decls["module"]:
            return Ref(name)
        raise KeyError(f"{self.path.name}: unknown name {name}")

    def ev(self, node: Any, env: Mapping[str, Any]) -> Any:
        if node is None:
            return None
        kind = node.data
        kids = node.children
        if kind == "string":
            token = kids[0]
            return (
                self.string(str(token), env) if token.type == "QUOTED_INTERPOLATION" else self.lookup(str(token), env)
            )
        if kind == "multi_line_string":
            return str(kids[0])[3:-3].lstrip("\r\n")
        if kind == "int_type":
            return int(kids[0])
        if kind in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[kind]
        if kind == "object":
            return {self.key(pair.children[0], env): self.ev(pair.children[1], env) for pair in kids}
        if kind == "array":
            return [self.ev(kid, env) for kid in kids]
        if kind == "loop":
            spec = kids[0]
            *names, source = spec.children
            out = []
            for index, item in enumerate(self.ev(source, env)):
                scope = {**env, str(names[0]): item, **({str(names[1]): index} if len(names) == 2 else {})}
                out.append(self.ev(kids[2], scope))
            return out
        if kind == "function":
            name, args = str(kids[0])[:-1], [self.ev(k, env) for k in kids[1:] if k is not None]
            return self.call_user_function(name, args) if name in self.decls["custom_func"] else self.call(name, args)
        if kind == "lambda_expression":
            variable, body = str(kids[0].children[0]), kids[1]
            return lambda value: self.ev(body, {**env, variable: value})
        if kind == "operator":
            return self.ev(kids[0], env)
        if kind == "property_accessor":
            value = self.ev(kids[0], env)
            for name in self.chain(kids[1]):
                value = Ref(f"{value.path}.{name}") if isinstance(value, Ref) else (value or {}).get(name)
            return value
        if kind == "index_accessor":
            base, index = self.ev(kids[0], env), self.ev(kids[1], env)
            return Ref(f"{base.path}[{index}]") if isinstance(base, Ref) else base[index]
        if kind == "conditional":
            return self.ev(kids[1], env) if self.ev(kids[0], env) else self.ev(kids[2], env)
        if kind in ("equals", "not_equals"):
            same = self.ev(kids[0], env) == self.ev(kids[1], env)
            return same if kind == "equals" else not same
        if kind == "not_op":
            return not self.ev(kids[0], env)
        if kind == "and_op":  # both short-circuit, as in Bicep
            return bool(self.ev(kids[0], env)) and bool(self.ev(kids[1], env))
        if kind == "or_op":
            return bool(self.ev(kids[0], env)) or bool(self.ev(kids[1], env))
        if kind in _COMPARISONS:
            return _COMPARISONS[kind](self.ev(kids[0], env), self.ev(kids[1], env))
        if kind == "coalesce":
            first = self.ev(kids[0], env)
            return first if first is not None else self.ev(kids[1], env)
        raise NotImplementedError(f"{self.path.name}: the test evaluator does not know '{kind}'")

    def chain(self, node: Any) -> list[str]:
        """``a.b.c`` parses as accessor(a, accessor(b, c)): the property names after the first operand."""
        if node.data == "string" and node.children[0].type == "STRING":
            return [str(node.children[0])]
        if node.data == "operator" and node.children[0].data == "property_accessor":
            return self.chain(node.children[0].children[0]) + self.chain(node.children[0].children[1])
        raise NotImplementedError(f"{self.path.name}: unexpected property access {node}")

    def key(self, node: Tree[Any], env: Mapping[str, Any]) -> str:
        token = typing.cast("Token", node.children[0])
        return self.string(str(token), env) if token.type == "QUOTED_INTERPOLATION" else str(token)

    def string(self, literal: str, env: Mapping[str, Any]) -> str:
        """A quoted Bicep string: escapes, and ``${expr}`` evaluated by parsing ``expr`` as a variable's value."""
        text, out, i = literal[1:-1], [], 0
        escapes = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", "$": "$"}
        while i < len(text):
            if text[i] == "\\":
                out.append(escapes[text[i + 1]])
                i += 2
            elif text.startswith("${", i):
                end = text.index("}", i)
                declaration: Any = parser().lark_parser.parse(f"var x = {text[i + 2 : end]}\n").children[0]
                out.append(str(self.ev(declaration.children[3], env)))
                i = end + 1
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    def call_user_function(self, name: str, args: list[Any]) -> Any:
        """A ``func`` declaration: decorators, name, (parameter, type)..., return type, body."""
        declaration = self.decls["custom_func"][name]
        parameters = [str(kid) for kid in declaration.children[2:-2] if isinstance(kid, Token)]
        if len(parameters) != len(args):
            raise TypeError(f"{self.path.name}: {name}() takes {len(parameters)} arguments, got {len(args)}")
        return self.ev(declaration.children[-1], {_FUNCTION_SCOPE: name, **dict(zip(parameters, args, strict=True))})

    def call(self, name: str, args: list[Any]) -> Any:
        if name in _FUNCTIONS:
            if any(isinstance(arg, Ref) for arg in args) and name not in _TAKES_REFS:
                raise NotImplementedError(f"{self.path.name}: {name}() of a runtime value {args}: give it as a symbol")
            return _FUNCTIONS[name](*args)
        if name == "loadTextContent":
            return (self.path.parent / args[0]).read_text(encoding="utf-8")
        raise NotImplementedError(f"{self.path.name}: the test evaluator does not know {name}()")


def main_template(**params: Any) -> Template:
    """main.bicep with the required source URI, these parameters and the modules' outputs."""
    return Template(INFRA / "main.bicep", {"sourceMongoUri": SOURCE_URI, **params}, MODULE_OUTPUTS)


def module_template(main: Template, module: str, symbols: Mapping[str, Any] | None = None) -> Template:
    """The module's own template, given the parameters main.bicep passes it."""
    path = INFRA / str(main.decls["module"][module].children[2].children[0])[1:-1]
    params = main.body("module", module)["params"]
    assert isinstance(params, dict)
    return Template(path, params, symbols)


def _fail(message: str) -> typing.NoReturn:
    raise BicepFail(message)


def _union(*args: Any) -> Any:
    """ARM's union(): objects merge deeply, later ones winning; arrays keep each value once, in order."""
    if isinstance(args[0], list):
        out: list[Any] = []
        for value in (value for arg in args for value in arg):
            if value not in out:
                out.append(value)
        return out
    merged: dict[str, Any] = {}
    for arg in args:
        merged = _deep_union(merged, arg)
    return merged


def _contains(container: Any, item: Any) -> bool:
    """Case-sensitive for strings and arrays, case-insensitive for object keys (Bicep's contains())."""
    if isinstance(container, dict):
        return str(item).lower() in {str(key).lower() for key in container}
    return item in container


def _to_lower(value: Any) -> Any:
    return Ref(f"toLower({value.path})") if isinstance(value, Ref) else str(value).lower()


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "greater_than": lambda a, b: a > b,
    "greater_than_or_equals": lambda a, b: a >= b,
    "less_than": lambda a, b: a < b,
    "less_than_or_equals": lambda a, b: a <= b,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "string": lambda value: value if isinstance(value, str) else json.dumps(value),
    "union": _union,
    "concat": lambda *args: [x for arg in args for x in arg] if isinstance(args[0], list) else "".join(map(str, args)),
    "empty": lambda value: not value,
    "length": len,
    "contains": _contains,
    # ARM compares startsWith / endsWith without regard to case.
    "startsWith": lambda text, prefix: text.lower().startswith(prefix.lower()),
    "endsWith": lambda text, suffix: text.lower().endswith(suffix.lower()),
    "toLower": _to_lower,
    "toUpper": lambda value: str(value).upper(),
    "take": lambda value, count: value[: max(count, 0)],
    "substring": lambda text, start, count: text[start : start + count],
    "replace": lambda text, old, new: str(text).replace(old, new),
    "join": lambda values, separator: separator.join(values),
    "range": lambda start, count: list(range(start, start + count)),
    "objectKeys": lambda value: list(value),
    "filter": lambda values, predicate: [value for value in values if predicate(value)],
    "map": lambda values, function: [function(value) for value in values],
    "fail": _fail,
    "uniqueString": lambda *args: hashlib.sha256("|".join(map(str, args)).encode()).hexdigest()[:13],
    "guid": lambda *args: str(uuid.uuid5(uuid.NAMESPACE_URL, "|".join(map(str, args)))),
    "tenant": lambda: {"tenantId": TENANT},
    "resourceGroup": lambda *args: Ref(f"resourceGroup({', '.join(map(str, args))})"),
    "subscription": lambda *args: Ref(f"subscription({', '.join(map(str, args))})"),
    "subscriptionResourceId": lambda provider, name: f"/subscriptions/<subscription>/providers/{provider}/{name}",
}
# Functions whose result stays meaningful for a symbolic argument (they build strings or ids from it).
_TAKES_REFS = {"string", "concat", "toLower", "uniqueString", "guid", "resourceGroup", "subscription", "union"}


def _deep_union(a: Any, b: Any) -> Any:
    """ARM's union(): later objects win, nested objects merge."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: _deep_union(a[k], v) if k in a else v for k, v in b.items()}}
    return b


@cache
def parser() -> BicepParser:
    """One pycep parser for every template (building it compiles the grammar)."""
    return BicepParser()
