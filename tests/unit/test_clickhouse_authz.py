"""The endpoint's grant rules on syntax trees as ClickHouse prints them (EXPLAIN AST)."""

from __future__ import annotations

import pytest

from services.common.clickhouse_access import ROLES
from services.stack.clickhouse_authz import AccessDenied, Grants, parse_ast

SELECT_SYSTEM_USERS = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier system.users
"""
SELECT_OWN = SELECT_SYSTEM_USERS.replace("system.users", "feedback (alias f)").replace("Asterisk", "Identifier _offset")
INSERT_FUNCTION = """InsertQuery   (children 2)
 Function file (children 1)
  ExpressionList (children 2)
   Literal '/tmp/pwn.txt'
   Literal 'LineAsString'
 SelectWithUnionQuery (children 1)
  ExpressionList (children 1)
   SelectQuery (children 1)
    ExpressionList (children 1)
     Literal 'x'
"""
INSERT_INTO = """InsertQuery   (children 3)
 Identifier argus
 Identifier feedback
 ExpressionList (children 1)
  Identifier x
"""
INTO_OUTFILE = """SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Literal UInt64_1
 Literal '/tmp/o.txt'
"""
SCALAR_FILE = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Function file (children 1)
     ExpressionList (children 1)
      Literal '/etc/passwd'
"""
# an identifier with a line break prints a fake line: it can only add nodes, never hide one
INJECTED = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier feedback
SelectWithUnionQuery
"""

ingest = Grants(ROLES["argus_ingest"], ("argus",))
sre = Grants(ROLES["argus_sre"], ("argus", "test_*"))


def test_reads_of_granted_tables_pass_and_the_rest_is_refused() -> None:
    sre.check(parse_ast(SELECT_OWN), "argus")
    sre.check(parse_ast(SELECT_OWN), "test_1")
    with pytest.raises(AccessDenied, match="system.users"):
        sre.check(parse_ast(SELECT_SYSTEM_USERS), "argus")
    with pytest.raises(AccessDenied, match="SELECT ON other.feedback"):
        sre.check(parse_ast(SELECT_OWN), "other")
    ingest.check(parse_ast(SELECT_OWN), "argus")
    with pytest.raises(AccessDenied, match="inference_log"):
        ingest.check(parse_ast(SELECT_OWN.replace("feedback", "inference_log")), "argus")


def test_inserts_only_into_granted_tables_never_into_functions_or_outfiles() -> None:
    ingest.check(parse_ast(INSERT_INTO), "default")
    with pytest.raises(AccessDenied, match="INSERT ON argus.schema_migrations"):
        ingest.check(parse_ast(INSERT_INTO.replace("feedback", "schema_migrations")), "argus")
    with pytest.raises(AccessDenied, match="INSERT"):
        sre.check(parse_ast(INSERT_INTO), "argus")
    for tree in (INSERT_FUNCTION, INTO_OUTFILE, SCALAR_FILE):
        with pytest.raises(AccessDenied):
            ingest.check(parse_ast(tree), "argus")


def test_statements_other_than_reads_and_inserts_are_refused() -> None:
    for kind in ("CreateQuery", "DropQuery", "Set", "SYSTEM query", "KillQueryQuery", "BackupQuery", "UseQuery x"):
        with pytest.raises(AccessDenied):
            sre.check(parse_ast(kind + "\n"), "argus")


def test_trees_that_are_not_one_well_formed_tree_are_refused() -> None:
    with pytest.raises(AccessDenied, match="more than one root"):
        parse_ast(INJECTED)
    with pytest.raises(AccessDenied, match="not well formed"):
        parse_ast("SelectWithUnionQuery\n   Literal 1\n")
    with pytest.raises(AccessDenied, match="not allowed"):
        sre.check(parse_ast(SELECT_OWN.replace("feedback (alias f)", "argus.t x")), "argus")


def test_settings_a_client_needs_pass_others_are_refused() -> None:
    ingest.check_settings(["date_time_input_format", "output_format_json_quote_64bit_integers", "max_execution_time"])
    for name in ("allow_ddl", "max_memory_usage", "readonly_x", "user_files_path"):
        with pytest.raises(AccessDenied):
            ingest.check_settings([name])


def _select(column: str, table: str = "inference_requests") -> str:
    return SELECT_SYSTEM_USERS.replace("system.users", table).replace("Asterisk", column)


def test_sealed_texts_and_key_dictionaries() -> None:
    """Texts are for roles with text access; nobody but the admin reads a key dictionary
    or calls a dictionary function (it would hand out subject keys)."""
    sre, analyst = (Grants(ROLES[n], ("argus",)) for n in ("argus_sre", "argus_analyst"))
    for column in (
        "Identifier prompt",
        "Identifier prompt_ct",
        "Identifier metadata_json_ct",
        "Identifier r.output (alias o)",
        "Asterisk",
    ):
        sre.check(parse_ast(_select(column)), "argus")
        with pytest.raises(AccessDenied):
            analyst.check(parse_ast(_select(column)), "argus")
    analyst.check(parse_ast(_select("Identifier latency_ms", "inference_responses")), "argus")
    dict_get = "Function dictGet (children 1)\n     ExpressionList (children 2)\n      Literal 'argus.subject_keys'\n      Literal 'key'"
    for grants in (sre, analyst):
        with pytest.raises(AccessDenied):
            grants.check(parse_ast(_select("Identifier x", "subject_keys")), "argus")
        with pytest.raises(AccessDenied):
            grants.check(parse_ast(_select(dict_get)), "argus")
