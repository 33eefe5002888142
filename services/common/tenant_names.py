"""What a tenant name may be, and how to find it in a topic name (no imports: the
registry uses it to map a tenant's topic back to its contract)."""

from __future__ import annotations

import re

# 1-40 lowercase letters, digits and inner dashes, starting with a letter: no dots or
# underscores, so a name can sit inside topic names and prefix ACLs without ambiguity
NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")


def tenant_of(template: str, name: str) -> str | None:
    """The tenant whose copy of ``template`` (``...{tenant}...``) is topic ``name``.

    >>> tenant_of("argus.tenant.{tenant}.requests", "argus.tenant.acme.requests")
    'acme'
    """
    head, _, tail = template.partition("{tenant}")
    if not (name.startswith(head) and name.endswith(tail)) or len(name) <= len(head) + len(tail):
        return None
    tenant = name[len(head) : len(name) - len(tail)]
    return tenant if NAME.fullmatch(tenant) else None
