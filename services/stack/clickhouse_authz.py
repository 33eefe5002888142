"""Grants of the local ClickHouse endpoint, enforced with ClickHouse's own parser.

The in-process engine runs every query as one built-in user that holds every grant
(files, URLs, programs), so the endpoint decides what each user may run before the
engine sees it. It never parses SQL itself: the engine checks that the text is exactly
one statement (``formatQuery``) and prints its syntax tree (``EXPLAIN AST``); the rules
below read that tree. Whatever the tree cannot prove allowed is refused, with
ClickHouse's ``ACCESS_DENIED`` (497).

Rules for every user but the admin (grants from :mod:`services.common.clickhouse_access`):

- statements: SELECT (with UNION/INTERSECT/EXCEPT), DESCRIBE, EXISTS, SHOW TABLES; INSERT
  only into the tables the role may insert into. No DDL, no SET, no SYSTEM, KILL,
  OPTIMIZE, BACKUP, no ``SETTINGS`` clause (settings travel as URL parameters, where
  the endpoint checks them against the changeable list).
- tables: those the role may read in its database; from ``system`` only the metadata a
  client library needs (:data:`READABLE_SYSTEM_TABLES`); unqualified names resolve to
  the request's database.
- table functions: only those that read nothing outside the query (``input``,
  ``numbers``, ...), never ``file``, ``url``, ``s3``, ``executable``, ``remote``,
  ``merge``, ``Python``...; no ``INSERT INTO FUNCTION``, ``INTO OUTFILE``, ``FROM INFILE``;
  no ``file()`` function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from services.common.clickhouse_access import (
    CHANGEABLE_SETTING_PREFIXES,
    CHANGEABLE_SETTINGS,
    DENIED_FUNCTIONS,
    READABLE_SYSTEM_TABLES,
    SAFE_TABLE_FUNCTIONS,
    Role,
)
from services.common.subject_keys import KEY_DICTIONARIES, TEXT_COLUMNS

READ_KINDS = frozenset(
    {"SelectWithUnionQuery", "SelectIntersectExceptQuery", "DescribeQuery", "ExistsTableQuery", "ShowTables"}
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHILDREN = re.compile(r"\s*\(children \d+\)\s*$")
_ALIAS = re.compile(r"\s*\(alias [^()]*\)\s*$")


class AccessDenied(Exception):
    """Refused by the grants; the message says what and why (ClickHouse code 497)."""


@dataclass
class Node:
    kind: str
    arg: str
    children: list[Node] = field(default_factory=list)
    parent: Node | None = field(default=None, repr=False)


def parse_ast(text: str) -> Node:
    """``EXPLAIN AST`` output (one node per line, one space of indent per level) as a
    tree. Anything that is not one well-formed tree is refused."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        raise AccessDenied("the statement has no syntax tree")
    root: Node | None = None
    stack: list[tuple[int, Node]] = []
    for ln in lines:
        depth = len(ln) - len(ln.lstrip(" "))
        body = _CHILDREN.sub("", ln.strip())
        kind, _, arg = body.partition(" ")
        node = Node(kind, arg.strip())
        if depth == 0:
            if root is not None:
                raise AccessDenied("the statement's syntax tree has more than one root")
            root = node
            stack = [(0, node)]
            continue
        if not stack or depth > stack[-1][0] + 1:
            raise AccessDenied("the statement's syntax tree is not well formed")
        while stack[-1][0] >= depth:
            stack.pop()
        node.parent = stack[-1][1]
        node.parent.children.append(node)
        stack.append((depth, node))
    assert root is not None
    return root


def _walk(node: Node):  # noqa: ANN202 - generator of Node
    yield node
    for c in node.children:
        yield from _walk(c)


def _table(name: str, database: str) -> tuple[str, str]:
    name = _ALIAS.sub("", name).strip()
    parts = name.split(".")
    if len(parts) > 2 or not all(_NAME.match(p) for p in parts):
        raise AccessDenied(f"table name {name!r} is not allowed")
    return (parts[0], parts[1]) if len(parts) == 2 else (database, parts[0])


@dataclass(frozen=True)
class Grants:
    """A role, in the databases the endpoint serves it (glob patterns, e.g. ``argus``)."""

    role: Role
    databases: tuple[str, ...]

    def database_allowed(self, database: str) -> bool:
        return any(fnmatchcase(database, p) for p in self.databases)

    def check_select(self, database: str, table: str) -> None:
        if database == "system":
            if table in READABLE_SYSTEM_TABLES:
                return
            raise AccessDenied(f"{self.role.name}: Not enough privileges to read system.{table}")
        if table in KEY_DICTIONARIES:
            raise AccessDenied(f"{self.role.name}: the key dictionary {database}.{table} is the admin's only")
        if not (self.database_allowed(database) and self.role.may_select(table)):
            raise AccessDenied(f"{self.role.name}: Not enough privileges. SELECT ON {database}.{table} is not granted")

    def check_insert(self, database: str, table: str) -> None:
        if not (self.database_allowed(database) and self.role.may_insert(table)):
            raise AccessDenied(f"{self.role.name}: Not enough privileges. INSERT ON {database}.{table} is not granted")

    def check_settings(self, names: list[str]) -> None:
        for name in names:
            if name in CHANGEABLE_SETTINGS or name.startswith(CHANGEABLE_SETTING_PREFIXES):
                continue
            raise AccessDenied(f"{self.role.name}: setting {name} cannot be changed by this user")

    def check(self, tree: Node, database: str) -> None:
        """Raise :class:`AccessDenied` unless every part of the statement is granted."""
        if tree.kind == "InsertQuery":
            self._check_insert(tree, database)
        elif tree.kind not in READ_KINDS:
            raise AccessDenied(f"{self.role.name}: {tree.kind} is not allowed for this user")
        if tree.kind == "SelectWithUnionQuery" and any(c.kind == "Literal" for c in tree.children):
            raise AccessDenied(f"{self.role.name}: INTO OUTFILE is not allowed")
        reads_text = not self.role.text and tree.kind != "InsertQuery"  # an insert names columns it writes
        for node in _walk(tree):
            if node.kind == "Set":
                raise AccessDenied(
                    f"{self.role.name}: SET and SETTINGS clauses are not allowed; pass settings as URL parameters"
                )
            if node.kind == "TableIdentifier":
                self.check_select(*_table(node.arg, database))
            elif node.kind == "Function":
                fname = node.arg.split(" ")[0]
                as_table = node.parent is not None and node.parent.kind in ("TableExpression", "InsertQuery")
                if as_table and fname not in SAFE_TABLE_FUNCTIONS:
                    raise AccessDenied(f"{self.role.name}: table function {fname} is not allowed")
                if fname.lower() in DENIED_FUNCTIONS:
                    raise AccessDenied(f"{self.role.name}: function {fname} is not allowed")
                if fname.lower().startswith("dict"):  # dictGet & co. would hand out subject keys
                    raise AccessDenied(f"{self.role.name}: dictionary functions are the admin's only")
            elif reads_text and node.kind == "Identifier" and _ALIAS.sub("", node.arg).split(".")[-1] in TEXT_COLUMNS:
                raise AccessDenied(f"{self.role.name}: Not enough privileges to read the text column {node.arg}")
            elif reads_text and node.kind == "Asterisk":
                raise AccessDenied(f"{self.role.name}: name the columns (SELECT * would include sealed texts)")

    def _check_insert(self, tree: Node, database: str) -> None:
        if any(c.kind in ("Function", "Literal") for c in tree.children):
            raise AccessDenied(f"{self.role.name}: INSERT INTO FUNCTION and FROM INFILE are not allowed")
        idents = [c.arg for c in tree.children if c.kind == "Identifier"]
        if len(idents) == 1:
            db, table = _table(idents[0], database)
        elif len(idents) == 2:
            db, table = _table(".".join(idents), database)
        else:
            raise AccessDenied(f"{self.role.name}: cannot tell the target of this INSERT")
        self.check_insert(db, table)
