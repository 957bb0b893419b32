"""The Bicep evaluator the infra tests share (a helper module: the tests are in test_infra*.py).

No Bicep compiler can run here. ``pycep`` (pycep-parser) parses every file; ``Template`` computes the values the
checks need (app settings, the inline REPLICATOR_CONFIG, identity, roles) from the parse tree, with parameter values
chosen by each test and runtime values (resource ids, module outputs) kept symbolic as ``Ref``. The evaluator knows
only the expression forms these templates use and fails loudly on anything else, so a template change it does not
understand breaks the tests instead of passing silently.
"""

from __future__ import annotations

import hashlib
import json
import typing
import uuid
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from lark import Token, Tree
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
TENANT = "11111111-1111-1111-1111-111111111111"  # what tenant() returns


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
        self.decls: dict[str, dict[str, Tree[Any]]] = {k: {} for k in ("param", "var", "resource", "module", "output")}
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
        if name in self.decls["param"]:
            if name in self.given:
                return self.given[name]
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
            return self.call(str(kids[0])[:-1], [self.ev(k, env) for k in kids[1:] if k is not None])
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

    def call(self, name: str, args: list[Any]) -> Any:
        if name == "string":
            return args[0] if isinstance(args[0], str) else json.dumps(args[0])
        if name == "union":
            merged: dict[str, Any] = {}
            for arg in args:
                merged = _deep_union(merged, arg)
            return merged
        if name == "concat":
            return [x for arg in args for x in arg] if isinstance(args[0], list) else "".join(map(str, args))
        if name == "empty":
            return not args[0]
        if name == "toLower":
            return str(args[0]).lower()
        if name == "take":
            return args[0][: args[1]]
        if name == "replace":
            return str(args[0]).replace(args[1], args[2])
        if name == "uniqueString":
            return hashlib.sha256("|".join(map(str, args)).encode()).hexdigest()[:13]
        if name == "guid":
            return str(uuid.uuid5(uuid.NAMESPACE_URL, "|".join(map(str, args))))
        if name == "tenant":
            return {"tenantId": TENANT}
        if name in ("resourceGroup", "subscription"):
            return Ref(f"{name}({', '.join(map(str, args))})")
        if name == "subscriptionResourceId":
            return f"/subscriptions/<subscription>/providers/{args[0]}/{args[1]}"
        if name == "loadTextContent":
            return (self.path.parent / args[0]).read_text(encoding="utf-8")
        raise NotImplementedError(f"{self.path.name}: the test evaluator does not know {name}()")


def _deep_union(a: Any, b: Any) -> Any:
    """ARM's union(): later objects win, nested objects merge."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: _deep_union(a[k], v) if k in a else v for k, v in b.items()}}
    return b


@cache
def parser() -> BicepParser:
    """One pycep parser for every template (building it compiles the grammar)."""
    return BicepParser()
