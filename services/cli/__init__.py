"""``argus``: the platform's command line.

    argus stack up | down | start | stop | status   the local stack and its services
    argus topics list | create                      topics from the registry
    argus schemas check                             golden examples and compatibility
    argus migrate                                   ClickHouse migrations
    argus produce | consume | loadgen | sql         data in and out
    argus inference | ingest | drift | alerting | retraining run   the services (and their verbs)
    argus alerts list | silences | silence | expire | tail
    argus retrain list | show | approve | reject
    argus models list | register
    argus dlq list | replay                         dead letters
    argus acl plan | apply                          Kafka ACLs from the registry
    argus tenants add | list | remove               a tenant's principal, topics and ACLs
    argus keys create | revoke | list               API keys of the HTTP route
    argus identity init | list | revoke             signing keys of approvers, operators, pipelines
    argus audit verify | log                        the hash-chained audit trail
    argus privacy subject | erase | verify | export a data subject: crypto-shredding, receipts, access
    argus clickhouse-users                          production users.d files from the grants
    argus demo                                      the end-to-end demo on the local stack

One module per command group (as snuba's
``snuba/cli/``): ``stack``, ``contracts`` (topics, schemas, migrate), ``data`` (produce,
consume, loadgen, sql), ``runners`` (one group per service: ``argus <service> run``),
``alerts``, ``retrain`` (and models), ``dlq`` and ``demo``. Importing a module registers
its commands on :data:`services.cli.base.app`."""

from __future__ import annotations

from services.cli import (  # noqa: F401 (registers commands)
    acl,
    alerts,
    audit,
    contracts,
    data,
    demo,
    dlq,
    fairness,
    identity,
    keys,
    privacy,
    retrain,
    runners,
    stack,
    tenants,
)
from services.cli.base import app


def main() -> None:
    from services.common.logging import configure_logging

    configure_logging("WARNING", json=False)
    app()
