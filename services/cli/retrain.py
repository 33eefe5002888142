"""``argus retrain`` and ``argus models``: retraining triggers and the model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from services.cli.base import app, console
from services.cli.base import fail as _fail
from services.cli.base import when as _when
from services.cli.signed import publish as _publish
from services.cli.signed import read_all as _read_all
from services.cli.signed import signer_for as _signer

retrain_app = typer.Typer(help="Retraining triggers: list, inspect, approve, reject.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(retrain_app, name="retrain")
app.add_typer(models_app, name="models")


def _gate():  # noqa: ANN202 - GovernanceGate | None
    """The trust file's gate when this machine has the trust file (records no trusted key
    signed are then left out, as the service leaves them out), else None."""
    from services.common.governance import GovernanceGate, GovernanceSettings, Trust, trust_path

    path = trust_path()
    return GovernanceGate(Trust(path), GovernanceSettings().allow_unsigned_artifacts) if path.exists() else None


def _trusted(key: str, records: list[dict]) -> list[dict]:
    from services.common.governance import Refused

    gate = _gate()
    if gate is None:
        return records
    out = []
    for rec in records:
        try:
            gate.check(key, rec)
        except Refused:
            continue  # refused and dead-lettered by the service too
        out.append(rec)
    return out


def _book():  # noqa: ANN202
    from services.retraining.lifecycle import TransitionError, TriggerBook

    book = TriggerBook()
    for rec in _trusted("retraining-triggers", _read_all("retraining-triggers")):
        try:
            book.apply(rec)
        except TransitionError:
            pass  # ignored by the service too (or its start is gone with the topic's retention)
    for rec in _trusted("retraining-state", _read_all("retraining-state")):
        try:
            book.restore(rec)  # the latest state of triggers whose history retention has shortened
        except TransitionError:
            pass
    return book


@retrain_app.command("list")
def retrain_list(
    all_: bool = typer.Option(False, "--all", help="Closed triggers too."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Open triggers (or all), newest first."""
    triggers = sorted(_book().triggers.values(), key=lambda t: -t.created_at)
    triggers = [t for t in triggers if all_ or t.open]
    if json_out:
        console.print_json(
            json.dumps(
                [
                    {
                        "trigger_id": t.trigger_id,
                        "state": t.state,
                        "model": t.model,
                        "model_version": t.model_version,
                        "policy": t.policy,
                        "reason": t.reason,
                        "candidate_version": t.candidate_version,
                        "created_at": t.created_at,
                    }
                    for t in triggers
                ]
            )
        )
        return
    table = Table("trigger", "state", "model", "version", "policy", "reason", "raised")
    for t in triggers:
        table.add_row(t.trigger_id[:8], t.state, t.model, t.model_version, t.policy, t.reason, _when(t.created_at))
    console.print(table if triggers else "no triggers")


@retrain_app.command("show")
def retrain_show(trigger: str = typer.Argument(..., help="Trigger id or a unique prefix.")) -> None:
    """A trigger's evidence, dataset specification and history."""
    from services.retraining.lifecycle import TransitionError

    try:
        t = _book().find(trigger)
    except TransitionError as exc:
        _fail(str(exc))
    console.print(
        f"[bold]{t.trigger_id}[/] {t.model} {t.model_version} policy={t.policy} state=[bold]{t.state}[/]"
        + (f" candidate={t.candidate_version}" if t.candidate_version else ""),
        highlight=False,
    )
    console.print(f"reason: {t.reason}", highlight=False)
    console.print(
        f"drift events: {', '.join(t.drift_event_ids) or '-'}\nalerts: {', '.join(t.alert_event_ids) or '-'}",
        highlight=False,
    )
    console.print("dataset: " + ", ".join(f"{k}={v}" for k, v in sorted(t.dataset_spec.items())), highlight=False)
    table = Table("#", "state", "by", "comment", "at")
    for h in t.history:
        table.add_row(str(h["sequence"]), h["state"], h["actor"] or "", h["comment"] or "", _when(h["at"]))
    console.print(table)


_KEY = typer.Option(
    None,
    "--key",
    envvar="ARGUS_GOVERNANCE_SIGNING_KEY_FILE",
    help="Your Ed25519 private key (default: the local stack's key of --by, from `argus identity init`).",
)


def _decide(trigger: str, state: str, by: str, comment: str, key: Optional[Path]) -> None:
    from services.common.registry import get_codec
    from services.retraining.lifecycle import TransitionError

    signer = _signer(by, key)
    book = _book()
    try:
        t = book.find(trigger)
        rec = book.next_record(t.trigger_id, state, by, comment)
    except TransitionError as exc:
        _fail(str(exc))
    codec = get_codec("retraining-triggers")
    _publish("retraining-triggers", signer.sign_record(codec.name, codec.version, rec), t.trigger_id)
    console.print(f"trigger {t.trigger_id} {state} by {by} (signed, key {signer.key_id})", highlight=False)


@retrain_app.command("approve")
def retrain_approve(
    trigger: str = typer.Argument(...),
    by: str = typer.Option(..., help="Who approves: the name your key is trusted under (role approver)."),
    comment: str = typer.Option("", help="Why."),
    key: Optional[Path] = _KEY,
) -> None:
    """Approve a trigger awaiting approval (signed with your key): the service dispatches the job."""
    _decide(trigger, "approved", by, comment, key)


@retrain_app.command("reject")
def retrain_reject(
    trigger: str = typer.Argument(...),
    by: str = typer.Option(..., help="Who rejects: the name your key is trusted under (role approver)."),
    comment: str = typer.Option(..., help="Why (kept with the trigger)."),
    key: Optional[Path] = _KEY,
) -> None:
    """Reject a trigger awaiting approval (signed with your key): nothing is dispatched."""
    _decide(trigger, "rejected", by, comment, key)


def _registry() -> tuple[Any, list[dict]]:
    """The registry folded from the trusted records, and those records (its history)."""
    from services.retraining.registry import ModelRegistry

    reg = ModelRegistry()
    history = []
    for rec in _trusted("model-registry", _read_all("model-registry")):
        if reg.apply(rec):  # not a record that would bring a retired version back (refused by the service too)
            history.append(rec)
    return reg, history


@models_app.command("list")
def models_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """Every registered version with its latest status."""
    reg, _ = _registry()
    rows = sorted(reg.versions.values(), key=lambda r: (r["model"], r["version"]))
    if json_out:
        console.print_json(json.dumps(rows))
        return
    table = Table("model", "version", "status", "sha256", "artifact", "by", "comment")
    for r in rows:
        table.add_row(
            r["model"], r["version"], r["status"], r["sha256"][:12], r["artifact_uri"], r["actor"], r["comment"]
        )
    console.print(table if rows else "no versions registered")


@models_app.command("register")
def models_register(
    model: str = typer.Argument(...),
    version: str = typer.Argument(...),
    artifact: Path = typer.Argument(
        ...,
        exists=True,
        help="The artifact: a GGUF file, or a model directory for vLLM (its digest is computed: a file's sha256, a "
        "directory's manifest digest).",
    ),
    status: str = typer.Option("candidate", help="candidate, or active for the version serving today."),
    trigger: Optional[str] = typer.Option(None, help="The retraining trigger this version answers."),
    parent: Optional[str] = typer.Option(None, help="The version it was trained from."),
    card: list[str] = typer.Option([], help="Model card entries key=value (data window, metrics, limitations, owner)."),
    by: str = typer.Option(
        ..., help="Who registers it: the name your key is trusted under (pipeline; operator for --status active)."
    ),
    comment: str = typer.Option(""),
    sha256: Optional[str] = typer.Option(
        None, help="The digest the pipeline built (default: computed from ARTIFACT now)."
    ),
    key: Optional[Path] = _KEY,
    artifact_key: Optional[Path] = typer.Option(
        None, help="The pipeline key that signs the artifact (default: --key, i.e. the registrant's)."
    ),
) -> None:
    """Register a model version with its artifact's digest and model card, signed: the
    record by you, the artifact (model, version, digest, card digest) by a pipeline key.
    Whatever loads the version later (validation, inference) refuses a file with another
    digest or no valid artifact signature."""
    from services.common.artifacts import ArtifactRejected, artifact_digest
    from services.common.governance import Signer
    from services.common.registry import get_codec
    from services.common.signing import load_key
    from services.retraining.registry import version_record

    signer = _signer(by, key)
    artifact_signer = signer
    if artifact_key is not None:
        try:
            artifact_signer = Signer("pipeline", load_key(artifact_key))
        except (OSError, ValueError) as exc:
            _fail(f"cannot sign the artifact with {artifact_key}: {exc}")

    entries = dict(c.split("=", 1) for c in card if "=" in c)
    if len(entries) != len(card):
        _fail("card entries are key=value", 2)
    try:
        digest = sha256 or artifact_digest(artifact)
    except (ArtifactRejected, OSError) as exc:
        _fail(str(exc), 2)
    try:
        rec = version_record(
            model,
            version,
            status,
            str(artifact.resolve()),
            digest,
            actor=by,
            card=entries,
            parent_version=parent,
            trigger_id=trigger,
            comment=comment,
        )
    except ValueError as exc:
        _fail(str(exc), 2)
    rec["artifact_signature"] = artifact_signer.sign_artifact(model, version, rec["sha256"], rec["card"])
    codec = get_codec("model-registry")
    _publish("model-registry", signer.sign_record(codec.name, codec.version, rec), f"{model}/{version}")
    console.print(
        f"registered {model} {version} ({status}) sha256 {digest}, signed by {by} (key {signer.key_id}), "
        f"artifact by key {artifact_signer.key_id}",
        highlight=False,
    )


@models_app.command("show")
def models_show(
    model: str = typer.Argument(...),
    version: str = typer.Argument(...),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """A version's model card, artifact, signatures (checked against the trust file) and
    status history."""
    from services.common.governance import Refused, card_digest, check_artifact
    from services.retraining.registry import epoch_ms

    reg, history = _registry()
    rec = reg.get(model, version)
    if rec is None:
        _fail(f"{model} {version} is not registered (argus models list)")
    gate = _gate()
    if gate is None:
        artifact_check = "not checked: no trust file on this machine"
    else:
        try:
            artifact_check = f"verified: signed by {check_artifact(gate.trust, rec).name} (pipeline)"
        except Refused as exc:
            artifact_check = f"REFUSED ({exc.kind}): {exc}"
    steps = [
        {
            "status": r["status"],
            "actor": r["actor"],
            "comment": r["comment"],
            "trigger_id": r.get("trigger_id"),
            "signed_by": (r.get("signature") or {}).get("key_id"),
            "occurred_at": _when(epoch_ms(r["occurred_at"]) / 1000),
        }
        for r in history
        if (r["model"], r["version"]) == (model, version)
    ]
    shown = {
        "model": model,
        "version": version,
        "status": rec["status"],
        "artifact_uri": rec["artifact_uri"],
        "sha256": rec["sha256"],
        "parent_version": rec.get("parent_version"),
        "trigger_id": rec.get("trigger_id"),
        "card": dict(sorted(rec["card"].items())),
        "card_sha256": card_digest(rec["card"]),
        "artifact_signature": {
            "key_id": (rec.get("artifact_signature") or {}).get("key_id"),
            "check": artifact_check,
        },
        "history": steps,
    }
    if json_out:
        console.print_json(json.dumps(shown))
        return
    console.print(f"[bold]{model} {version}[/] status=[bold]{rec['status']}[/]", highlight=False)
    console.print(
        f"artifact: {rec['artifact_uri']}\nsha256: {rec['sha256']}\n"
        f"parent: {rec.get('parent_version') or '-'}  trigger: {rec.get('trigger_id') or '-'}\n"
        f"artifact signature: {artifact_check}",
        highlight=False,
    )
    card = Table("model card", "", title=f"card sha256 {shown['card_sha256'][:16]}…")
    for k, v in shown["card"].items():
        card.add_row(k, v)
    console.print(card if shown["card"] else "model card: empty")
    table = Table("status", "by", "comment", "signed by key", "at")
    for st in steps:
        table.add_row(st["status"], st["actor"], st["comment"], st["signed_by"] or "", st["occurred_at"])
    console.print(table)


@models_app.command("retire")
def models_retire(
    model: str = typer.Argument(...),
    version: str = typer.Argument(...),
    by: str = typer.Option(..., help="Who retires it: the name your key is trusted under (role operator)."),
    comment: str = typer.Option(..., help="Why (kept with the version and in the audit trail)."),
    key: Optional[Path] = _KEY,
) -> None:
    """Retire a version (signed with your operator key): the retraining service drains it
    from traffic (unless it is the only version serving: promote a replacement first), and
    it can never be canaried or promoted again; its history stays."""
    from services.common.registry import get_codec
    from services.retraining.registry import with_status

    signer = _signer(by, key)
    reg, _ = _registry()
    rec = reg.get(model, version)
    if rec is None:
        _fail(f"{model} {version} is not registered (argus models list)")
    if rec["status"] == "retired":
        _fail(f"{model} {version} is already retired (by {rec['actor']})")
    codec = get_codec("model-registry")
    retired = signer.sign_record(codec.name, codec.version, with_status(rec, "retired", by, comment))
    _publish("model-registry", retired, f"{model}/{version}")
    console.print(
        f"retired {model} {version} (was {rec['status']}), signed by {by} (key {signer.key_id}); "
        "the retraining service drains it from traffic",
        highlight=False,
    )


@retrain_app.command("sign-policies")
def retrain_sign_policies(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="The retraining policies (YAML)."),
    by: str = typer.Option(..., "--by", help="Who approves them: the name your key is trusted under (operator)."),
    key: Optional[Path] = _KEY,
    out: Optional[Path] = typer.Option(None, "--out", help="Where the signature goes (default: CONFIG.sig)."),
) -> None:
    """Sign retraining policies (checked first) for the retraining service, which starts
    only with policies an operator signed; the signing is recorded in the audit trail."""
    from services.cli.signed import sign_policy_file
    from services.common.configfile import ConfigError
    from services.retraining.config import load_config

    try:
        parsed = load_config(config)
    except ConfigError as exc:
        _fail(f"{config}: {exc}", 2)
    signed, target = sign_policy_file(
        config, "retraining-policies", "retraining.policies_signed", by, key, out, {"policies": len(parsed.policies)}
    )
    console.print(
        f"signed {config} ({len(parsed.policies)} policies, sha256 {signed['sha256'][:16]}…) as {by}: {target}",
        highlight=False,
    )
