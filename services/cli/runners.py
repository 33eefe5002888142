"""One command group per service: ``argus <service> run`` starts it exactly as
``python -m services.<service>`` does (the same ``main``), plus the service's own verbs.

    argus inference run | bridge | deploy
    argus ingest run
    argus drift run | reset-reference MODEL VERSION
    argus alerting run | check [FILE]
    argus retraining run | check [FILE]
"""

from __future__ import annotations

import importlib
from typing import Optional

import typer

from services.cli.base import app


def _main(service: str, argv: list[str]) -> None:
    """Run ``services.<service>.__main__.main(argv)`` and exit with its status."""
    module = importlib.import_module(f"services.{service}.__main__")
    raise typer.Exit(module.main(argv) or 0)


inference_app = typer.Typer(
    help="The inference service: Ray Serve, the Kafka bridge, serving states.", no_args_is_help=True
)
ingest_app = typer.Typer(help="The logging service: every topic -> ClickHouse, PII-protected.", no_args_is_help=True)
drift_app = typer.Typer(help="The drift service: online drift detection (faust, river).", no_args_is_help=True)
alerting_app = typer.Typer(
    help="The alerting service: rules, grouping, silences, signed webhooks.", no_args_is_help=True
)
retraining_app = typer.Typer(
    help="The retraining service: evidence -> triggers -> approval -> rollout.", no_args_is_help=True
)
for name, group in (
    ("inference", inference_app),
    ("ingest", ingest_app),
    ("drift", drift_app),
    ("alerting", alerting_app),
    ("retraining", retraining_app),
):
    app.add_typer(group, name=name)


@inference_app.command("run")
def inference_run() -> None:
    """Start or join Ray, deploy the application, run the bridge and the serving-state applier."""
    _main("inference", ["serve"])


@inference_app.command("bridge")
def inference_bridge() -> None:
    """Run only the Kafka bridge against an application already deployed on the Ray cluster."""
    _main("inference", ["bridge"])


@inference_app.command("deploy")
def inference_deploy() -> None:
    """(Re)deploy the application with the current settings and exit."""
    _main("inference", ["deploy"])


@inference_app.command("serve-config")
def inference_serve_config(
    trust_file: str = typer.Option(
        None,
        "--trust-file",
        help="Where every Ray node mounts the trust file (KubeRay: /etc/argus/governance/trust/trust.yaml); "
        "default: the local trust file's keys, inline.",
    ),
) -> None:
    """The Serve config the code applies for ARGUS_INFERENCE_* (KubeRay's serveConfigV2)."""
    _main("inference", ["serve-config", *(["--trust-file", trust_file] if trust_file else [])])


@ingest_app.command("run")
def ingest_run() -> None:
    """Run the logging service; settings from ARGUS_INGEST_*."""
    _main("ingest", [])


@drift_app.command("run")
def drift_run() -> None:
    """Run a drift worker; settings from ARGUS_DRIFT_*."""
    _main("drift", [])


@drift_app.command("reset-reference")
def drift_reset_reference(
    model: str = typer.Argument(...), version: str = typer.Argument(..., help="'*' for prompt features.")
) -> None:
    """Pin a new reference window for one stream (after a deliberate change)."""
    _main("drift", ["reset-reference", model, version])


@alerting_app.command("run")
def alerting_run() -> None:
    """Run the alerting service; settings from ARGUS_ALERTING_*."""
    _main("alerting", [])


@alerting_app.command("check")
def alerting_check(
    path: Optional[str] = typer.Argument(None, help="Configuration file (default: the configured one)."),
) -> None:
    """Validate an alerting configuration."""
    _main("alerting", ["check", *([path] if path else [])])


@retraining_app.command("run")
def retraining_run() -> None:
    """Run the retraining service; settings from ARGUS_RETRAINING_*."""
    _main("retraining", [])


@retraining_app.command("check")
def retraining_check(
    path: Optional[str] = typer.Argument(None, help="Policy file (default: the configured one)."),
) -> None:
    """Validate a retraining policy file."""
    _main("retraining", ["check", *([path] if path else [])])
