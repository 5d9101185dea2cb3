"""Hypothesis strategies read off a JSON Schema: valid instances, and single-rule mutations."""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

# The stdlib's regex parser: sre_parse warns of its deprecation since 3.11, re._parser does not.
_sre: Any = importlib.import_module("re._parser" if sys.version_info >= (3, 11) else "sre_parse")

Path = tuple[str | int, ...]

# "format" too: in draft 2020-12 it annotates, and neither validator asserts it.
ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "format"}
)
STRUCTURE = frozenset({"$defs", "$ref", "properties", "items"})
# Every assertion keyword both the instance strategy and the mutations understand.
RULES = frozenset(
    {
        "type", "enum", "required", "additionalProperties", "minLength", "maxLength", "pattern",
        "minItems", "maxItems", "uniqueItems", "minimum", "maximum",
    }
)  # fmt: skip
SPREAD = {"string": 40, "array": 3}  # how far past its minimum a size goes off the boundaries


def pointer(path: Iterable[str | int]) -> str:
    """Return the JSON Pointer of a path, written out here rather than taken from the project."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def keywords_used(schema: Mapping[str, Any]) -> set[str]:
    """Return every keyword of the schema and its subschemas."""
    found = set(schema)
    children = [*schema.get("properties", {}).values(), *schema.get("$defs", {}).values()]
    if isinstance(schema.get("items"), dict):
        children.append(schema["items"])
    for child in children:
        found |= keywords_used(child)
    return found


def _json_text(value: Any) -> str:
    """Return a value's canonical JSON, so that equal JSON values compare equal."""
    # Unlike JSON Schema, this tells 1 from 1.0; the schema's enums and unique items are strings.
    return json.dumps(value, sort_keys=True)


def broken_rules(node: Mapping[str, Any], value: Any) -> frozenset[str]:
    """Return the node's own rules a value breaks: the problems expected right at its place."""
    checker = Draft202012Validator.TYPE_CHECKER
    broken = set()
    if "type" in node and not checker.is_type(value, node["type"]):
        broken.add("type")
    if "enum" in node and _json_text(value) not in map(_json_text, node["enum"]):
        broken.add("enum")
    if isinstance(value, str):
        broken |= {"minLength"} if len(value) < node.get("minLength", 0) else set()
        broken |= {"maxLength"} if len(value) > node.get("maxLength", len(value)) else set()
        if "pattern" in node and not re.search(node["pattern"], value):
            broken.add("pattern")
    if checker.is_type(value, "number"):
        broken |= {"minimum"} if value < node.get("minimum", value) else set()
        broken |= {"maximum"} if value > node.get("maximum", value) else set()
    if isinstance(value, list):
        broken |= {"minItems"} if len(value) < node.get("minItems", 0) else set()
        broken |= {"maxItems"} if len(value) > node.get("maxItems", len(value)) else set()
        if node.get("uniqueItems") and len(set(map(_json_text, value))) < len(value):
            broken.add("uniqueItems")
    return frozenset(broken)


@functools.cache
def _one_of(options: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """Return a strategy choosing among options, built once per set of options."""
    return st.sampled_from(options)


def _pick(draw: st.DrawFn, options: Iterable[Any]) -> Any:
    """Draw one of the options, which must not be empty."""
    return draw(_one_of(tuple(options)))


class Regex:
    """A pattern of the subset schemas use, able to make matching strings of an exact length."""

    def __init__(self, pattern: str, cap: int) -> None:
        """Parse the pattern; lengths above cap are never needed, so never computed."""
        self.pattern = pattern
        self.cap = cap
        self.tree: Sequence[Any] = _sre.parse(pattern)
        # Results by kind and id of a parse-tree node, which the tree keeps alive.
        self._memo: dict[tuple[str, int], Any] = {}

    def _memoized(self, kind: str, node: Any, make: Callable[[], Any]) -> Any:
        """Return what make() returns for a node, computed once."""
        key = (kind, id(node))
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def lengths(self, items: Sequence[Any] | None = None) -> frozenset[int]:
        """Return the lengths (up to cap) of strings a sequence of parse-tree items matches."""
        items = self.tree if items is None else items
        found: frozenset[int] = self._rest(items)[0]
        return found

    def _rest(self, items: Sequence[Any]) -> list[frozenset[int]]:
        """Return, for each index i of a sequence, the lengths its items from i on match."""

        def make() -> list[frozenset[int]]:
            """Sum the lengths from the end."""
            rest = [frozenset({0})]
            for item in reversed(items):
                rest.insert(0, self._plus(self._item_lengths(item), rest[0]))
            return rest

        found: list[frozenset[int]] = self._memoized("rest", items, make)
        return found

    def _plus(self, left: frozenset[int], right: frozenset[int]) -> frozenset[int]:
        """Return the lengths of one part followed by another."""
        return frozenset(a + b for a in left for b in right if a + b <= self.cap)

    def _item_lengths(self, item: Any) -> frozenset[int]:
        """Return the lengths one parse-tree item matches."""
        op, argument = item
        if op in (_sre.LITERAL, _sre.IN):
            return frozenset({1})
        if op is _sre.AT:
            return frozenset({0})
        if op is _sre.SUBPATTERN:
            return self.lengths(argument[-1])
        if op is _sre.BRANCH:
            return frozenset().union(*(self.lengths(branch) for branch in argument[1]))
        if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
            return frozenset().union(*self._reach(item)[argument[0] :])
        raise NotImplementedError(f"regex construct {op} in {self.pattern}")

    def _reach(self, item: Any) -> list[frozenset[int]]:
        """Return, for each count k of a repeat, the lengths k copies of its body match."""

        def make() -> list[frozenset[int]]:
            """Add one copy at a time until the counts or the lengths run out."""
            low, high, body = item[1]
            once = self.lengths(body)
            reach = [frozenset({0})]
            while len(reach) <= min(high, max(low, self.cap)) and reach[-1]:
                reach.append(self._plus(reach[-1], once))
            return reach

        found: list[frozenset[int]] = self._memoized("reach", item, make)
        return found

    def draw(self, draw: st.DrawFn, length: int, items: Sequence[Any] | None = None) -> str:
        """Draw a string of the given length that a sequence of parse-tree items matches."""
        items = self.tree if items is None else items
        rest = self._rest(items)
        parts = []
        for index, item in enumerate(items):
            size = _pick(
                draw, sorted(n for n in self._item_lengths(item) if length - n in rest[index + 1])
            )
            parts.append(self._draw_item(draw, item, size))
            length -= size
        return "".join(parts)

    def _draw_item(self, draw: st.DrawFn, item: Any, length: int) -> str:
        """Draw a string of the given length that one parse-tree item matches."""
        op, argument = item
        if op is _sre.LITERAL:
            return chr(argument)
        if op is _sre.IN:
            return str(_pick(draw, self._characters(argument)))
        if op is _sre.AT:
            return ""
        if op is _sre.SUBPATTERN:
            return self.draw(draw, length, argument[-1])
        if op is _sre.BRANCH:
            return self.draw(
                draw, length, _pick(draw, [b for b in argument[1] if length in self.lengths(b)])
            )
        low, _, body = argument
        if len(body) == 1 and body[0][0] is _sre.IN:
            # One character class repeated: one draw of text, much faster than one per copy.
            return draw(_text_of(tuple(self._characters(body[0][1])), length))
        reach = self._reach(item)
        count = _pick(draw, [k for k in range(low, len(reach)) if length in reach[k]])
        parts = []
        for left in range(count - 1, -1, -1):  # copies still to draw after this one
            size = _pick(draw, sorted(n for n in self.lengths(body) if length - n in reach[left]))
            parts.append(self.draw(draw, size, body))
            length -= size
        return "".join(parts)

    def _characters(self, members: Sequence[Any]) -> tuple[str, ...]:
        """Return the characters of a character class made of literals and ranges."""

        def make() -> tuple[str, ...]:
            """List the literals and expand the ranges."""
            characters: list[str] = []
            for op, argument in members:
                if op is _sre.LITERAL:
                    characters.append(chr(argument))
                elif op is _sre.RANGE:
                    characters.extend(map(chr, range(argument[0], argument[1] + 1)))
                else:
                    raise NotImplementedError(f"character class member {op} in {self.pattern}")
            return tuple(characters)

        found: tuple[str, ...] = self._memoized("characters", members, make)
        return found


@functools.cache
def _text_of(characters: tuple[str, ...], length: int) -> st.SearchStrategy[str]:
    """Return text of exactly one length from an alphabet, built once per alphabet and length."""
    return st.text(alphabet=st.sampled_from(characters), min_size=length, max_size=length)


@functools.cache
def matching(regex: Regex, length: int) -> st.SearchStrategy[str]:
    """Return strings of exactly the given length that match the regex."""
    return st.composite(lambda draw: regex.draw(draw, length))()


def fitted(pieces: st.SearchStrategy[str], length: int) -> st.SearchStrategy[str]:
    """Return strings of exactly the given length, made by repeating joined pieces of text."""

    def fit(parts: list[str]) -> str:
        """Repeat the joined parts until long enough, then cut."""
        text = "\n\n".join(parts) or " "
        return (text * (length // len(text) + 1))[:length]

    return st.lists(pieces, min_size=1, max_size=4).map(fit)


@dataclass(frozen=True)
class Edit:
    """One change to an instance and the problems (path, rule) it must make a validator report."""

    path: Path
    value: Any
    expected: frozenset[tuple[str, str]]
    delete: bool = False

    def apply(self, instance: Any) -> Any:
        """Return a changed deep copy of the instance."""
        if not self.path:
            return copy.deepcopy(self.value)
        changed = copy.deepcopy(instance)
        parent = changed
        for part in self.path[:-1]:
            parent = parent[part]
        if self.delete:
            del parent[self.path[-1]]
        else:
            parent[self.path[-1]] = copy.deepcopy(self.value)
        return changed


@dataclass(frozen=True)
class Mutation:
    """A way to break one rule at one place of an instance."""

    rule: str
    path: Path
    # Built only when drawn: a payload has thousands of places, and one is drawn.
    make: Callable[[], st.SearchStrategy[Edit]] = field(compare=False, repr=False)

    def edits(self) -> st.SearchStrategy[Edit]:
        """Return the edits that break the rule here."""
        return self.make()


class SchemaStrategies:
    """Valid instances and single-rule mutations of one schema, all read off the schema."""

    def __init__(
        self,
        schema: Mapping[str, Any],
        text: st.SearchStrategy[str],
        any_json: st.SearchStrategy[Any],
        hints: Mapping[str, st.SearchStrategy[Any]] | None = None,
    ) -> None:
        """Take the schema, pieces of free text, any JSON value, and extra values by location."""
        unknown = keywords_used(schema) - ANNOTATIONS - STRUCTURE - RULES
        if unknown:  # a keyword neither side understands would quietly go untested
            raise NotImplementedError(f"schema keywords {sorted(unknown)}")
        self.schema = schema
        self.text = text
        self.any_json = any_json
        self.hints = dict(hints or {})
        for where in self.hints:
            self.at(where)  # a hint for a location the schema no longer has is stale
        self._regexes: dict[str, Regex] = {}
        self._texts: dict[int, st.SearchStrategy[str]] = {}  # built once per length
        # A JSON value of each JSON Schema type, to put where another type belongs.
        self._typed: dict[str, st.SearchStrategy[Any]] = {
            "null": st.none(),
            "boolean": st.booleans(),
            "integer": st.integers(),
            "number": st.floats(allow_nan=False, allow_infinity=False),
            "string": st.text(max_size=20),
            "array": st.lists(any_json, max_size=3),
            "object": st.dictionaries(st.text(max_size=8), any_json, max_size=3),
        }

    def at(self, where: str) -> Mapping[str, Any]:
        """Return the subschema at a JSON Pointer into the schema."""
        node: Any = self.schema
        for part in where.split("/")[1:]:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        if not isinstance(node, Mapping):
            raise KeyError(f"no subschema at {where!r}")
        return node

    def resolve(self, node: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], str]:
        """Follow a local $ref: return the subschema it names and that subschema's location."""
        if "$ref" not in node:
            return node, where
        if set(node) - ANNOTATIONS != {"$ref"} or not node["$ref"].startswith("#/"):
            raise NotImplementedError(f"$ref beside other keywords or not local at {where!r}")
        target = node["$ref"][1:]
        return self.resolve(self.at(target), target)

    def regex(self, node: Mapping[str, Any]) -> Regex:
        """Return the node's pattern, parsed once, with lengths known up to one past its max."""
        key = f"{node['pattern']}\0{node.get('maxLength')}"
        if key not in self._regexes:
            self._regexes[key] = Regex(node["pattern"], node.get("maxLength", 256) + 1)
        return self._regexes[key]

    def valid(
        self,
        node: Mapping[str, Any] | None = None,
        where: str = "",
        compact: bool = False,
        complete: bool = False,
    ) -> st.SearchStrategy[Any]:
        """Return instances valid against a subschema, at the root unless told.

        Compact instances keep every size near its minimum; complete ones have every member.
        """
        node, where = self.resolve(self.schema if node is None else node, where)
        made = self._valid(node, where, compact, complete)
        return self.hints[where] | made if where in self.hints else made

    def _valid(
        self, node: Mapping[str, Any], where: str, compact: bool, complete: bool
    ) -> st.SearchStrategy[Any]:
        """Return valid instances of a resolved subschema, hints aside."""
        if "enum" in node:
            return st.sampled_from(node["enum"])
        kind = node.get("type")
        if kind == "object":
            members = {
                name: self.valid(
                    child, f"{where}/properties/{pointer([name])[1:]}", compact, complete
                )
                for name, child in node.get("properties", {}).items()
            }
            required = set(members) if complete else set(node.get("required", []))
            return st.fixed_dictionaries(
                {name: made for name, made in members.items() if name in required},
                optional={name: made for name, made in members.items() if name not in required},
            )
        if kind == "array":
            return self._sizes(
                range(node.get("minItems", 0), node["maxItems"] + 1), "array", compact
            ).flatmap(self._lists(node, where, compact, complete))
        if kind == "string":
            if "pattern" in node:
                regex = self.regex(node)
                low, high = node.get("minLength", 0), node["maxLength"]
                fits = sorted(n for n in regex.lengths() if low <= n <= high)
                return self._sizes(fits, "string", compact).flatmap(
                    lambda length: matching(regex, length)
                )
            sizes = range(node.get("minLength", 0), node["maxLength"] + 1)
            return self._sizes(sizes, "string", compact).flatmap(self._text)
        if kind == "integer":
            low, high = node["minimum"], node["maximum"]
            return st.sampled_from([low, high]) | st.integers(low, high)
        if kind == "boolean":
            return st.booleans()
        raise NotImplementedError(f"subschema at {where!r}")

    def _lists(
        self, node: Mapping[str, Any], where: str, compact: bool, complete: bool
    ) -> Callable[[int], st.SearchStrategy[list[Any]]]:
        """Return a function giving the valid arrays of each length, built once per length."""
        few = node.get("minItems", 0) + SPREAD["array"]
        unique = _json_text if node.get("uniqueItems") else None
        item = self.valid(node["items"], f"{where}/items", compact, complete)
        # Many items are each kept small, so that a payload at every maximum at once (which
        # takes half a minute to render) is never made.
        small = self.valid(node["items"], f"{where}/items", True, complete)

        @functools.cache
        def lists(count: int) -> st.SearchStrategy[list[Any]]:
            """Return the valid arrays of count items."""
            if count <= few or unique:
                chosen = item if count <= few else small
                return st.lists(chosen, min_size=count, max_size=count, unique_by=unique)
            # A few small items, repeated: what a long array tests is its length, and drawing
            # 200 different steps would cost more than the whole rest of the payload.
            # Copies, not references, so that changing one item changes no other.
            return st.lists(small, min_size=1, max_size=few).map(
                lambda drawn: [copy.deepcopy(drawn[at % len(drawn)]) for at in range(count)]
            )

        return lists

    def _text(self, length: int) -> st.SearchStrategy[str]:
        """Return free text of exactly the given length."""
        if length not in self._texts:
            self._texts[length] = st.just("") if length == 0 else fitted(self.text, length)
        return self._texts[length]

    @staticmethod
    def _sizes(sizes: Sequence[int], kind: str, compact: bool) -> st.SearchStrategy[int]:
        """Return sizes: the smallest and largest allowed, or small ones in between."""
        near = st.sampled_from(sizes[: SPREAD[kind] + 1])
        return near if compact else st.one_of(st.just(sizes[0]), st.just(sizes[-1]), near)

    def mutations(self, instance: Any) -> list[Mutation]:
        """Return every single-rule mutation of a valid instance, walking the schema beside it."""
        found: list[Mutation] = []
        self._mutations(self.schema, "", instance, (), found)
        return found

    def _replace(
        self,
        node: Mapping[str, Any],
        path: Path,
        rule: str,
        values: Callable[[], st.SearchStrategy[Any]],
    ) -> Mutation:
        """Return a mutation that puts a new value at path, expecting the rules it breaks there."""

        def edit(value: Any) -> Edit:
            """Make the edit, expecting every rule of the node the new value breaks."""
            broken = broken_rules(node, value)
            assert rule in broken, f"mutation {rule} at {pointer(path)} gave {value!r}"
            return Edit(path, value, frozenset((pointer(path), each) for each in broken))

        return Mutation(rule, path, lambda: values().map(edit))

    def _wrong_type(self, kind: str) -> st.SearchStrategy[Any]:
        """Return JSON values not of a schema type."""
        checker = Draft202012Validator.TYPE_CHECKER
        others = [made for name, made in self._typed.items() if name != kind]
        # The filter only drops what JSON Schema counts as the type anyway, like 1.0 for integer.
        return st.one_of(others).filter(lambda value: not checker.is_type(value, kind))

    def _mutations(
        self, node: Mapping[str, Any], where: str, value: Any, path: Path, found: list[Mutation]
    ) -> None:
        """Add the mutations of a value at path and of everything inside it."""
        node, where = self.resolve(node, where)

        def add(rule: str, values: Callable[[], st.SearchStrategy[Any]]) -> None:
            """Add a mutation that replaces the value at path."""
            found.append(self._replace(node, path, rule, values))

        if "type" in node:
            add("type", lambda: self._wrong_type(node["type"]))
        if "enum" in node:
            add(
                "enum",
                lambda: (
                    st.sampled_from(node["enum"]).map(lambda v: f" {v}".upper()) | self.any_json
                ).filter(lambda v: v not in node["enum"]),
            )
        if "minimum" in node:
            add("minimum", lambda: st.integers(max_value=node["minimum"] - 1))
        if "maximum" in node:
            add("maximum", lambda: st.integers(min_value=node["maximum"] + 1))
        if isinstance(value, str):
            self._string_mutations(node, add)
        if isinstance(value, list):
            self._array_mutations(node, where, value, add)
            for index, item in enumerate(value):
                self._mutations(node["items"], f"{where}/items", item, (*path, index), found)
        if isinstance(value, dict):
            properties = node.get("properties", {})
            for name in node.get("required", []):
                member = (*path, name)
                expected = frozenset({(pointer(member), "required")})
                deletion = Edit(member, None, expected, delete=True)
                found.append(Mutation("required", member, functools.partial(st.just, deletion)))
            if node.get("additionalProperties") is False:
                found.append(
                    Mutation(
                        "additionalProperties",
                        path,
                        functools.partial(self._extra_member, node, path),
                    )
                )
            for name, member in value.items():
                child = f"{where}/properties/{pointer([name])[1:]}"
                self._mutations(properties[name], child, member, (*path, name), found)

    def _extra_member(self, node: Mapping[str, Any], path: Path) -> st.SearchStrategy[Edit]:
        """Return edits that add a member the object's properties do not name."""

        def edit(extra: tuple[str, Any]) -> Edit:
            """Add the member, expecting it to be reported by its own path."""
            member = (*path, extra[0])
            return Edit(member, extra[1], frozenset({(pointer(member), "additionalProperties")}))

        # Names a JSON Pointer must escape, besides any text at all.
        names = st.sampled_from(["a/b", "~", "~1/~0"]) | st.text(max_size=12)
        named = names.filter(lambda name: name not in node.get("properties", {}))
        return st.tuples(named, self.any_json).map(edit)

    def _string_mutations(
        self,
        node: Mapping[str, Any],
        add: Callable[[str, Callable[[], st.SearchStrategy[Any]]], None],
    ) -> None:
        """Add the length and pattern mutations of a string, for the keywords its node has."""
        low, high = node.get("minLength", 0), node.get("maxLength")
        if low > 0:
            add("minLength", lambda: self._text(low - 1))
        if "pattern" in node:
            longest = low + SPREAD["string"] if high is None else min(high, low + SPREAD["string"])
            add(
                "pattern",
                lambda: st.text(min_size=low, max_size=longest).filter(
                    lambda text: not re.search(node["pattern"], text)
                ),
            )
        if high is not None:
            # Keep to the pattern where it allows the length, so that only maxLength breaks.
            if "pattern" in node and high + 1 in self.regex(node).lengths():
                add("maxLength", lambda: matching(self.regex(node), high + 1))
            else:
                add("maxLength", lambda: self._text(high + 1))

    def _array_mutations(
        self,
        node: Mapping[str, Any],
        where: str,
        value: list[Any],
        add: Callable[[str, Callable[[], st.SearchStrategy[Any]]], None],
    ) -> None:
        """Add the size and uniqueness mutations of an array, for the keywords its node has."""
        low, high = node.get("minItems", 0), node.get("maxItems")
        if low > 0:
            add("minItems", lambda: st.just(value[: low - 1]))
        if high is not None:
            add(
                "maxItems",
                lambda: self.valid(node["items"], f"{where}/items", compact=True).map(
                    lambda extra: value + [extra] * (high + 1 - len(value))
                ),
            )
        if node.get("uniqueItems") and value:
            # Repeat the first item in place of the last, or after it when there is room.
            repeated = value[:-1] + value[:1] if len(value) > 1 else value + value[:1]
            if high is None or len(repeated) <= high:
                add("uniqueItems", lambda: st.just(repeated))
