"""`lorahub token create/list/revoke` against the local catalog."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lora_hub.api import ServingHub as Hub
from lora_hub.cli.main import app

runner = CliRunner()


def test_create_list_revoke(lorahub_env: dict[str, str]) -> None:
    r = runner.invoke(app, ["token", "create", "--scope", "write", "--namespace", "acme", "--expires", "12h"])
    assert r.exit_code == 0, r.stderr
    secret, about, note = r.stdout.splitlines()
    assert secret.startswith("lh_") and len(secret) == 46
    assert about.startswith("token ") and ": write on acme, expires " in about
    assert "shown once" in note
    token_id = about.split()[1].rstrip(":")
    with Hub() as hub:
        found = hub.authenticate(secret)
    assert found is not None and found.id == token_id and found.state() == "active"

    listed = runner.invoke(app, ["token", "list"])
    assert listed.exit_code == 0 and token_id in listed.stdout and secret not in listed.stdout
    assert "active" in listed.stdout
    as_json = json.loads(runner.invoke(app, ["token", "list", "--json"]).stdout)
    assert [t["id"] for t in as_json] == [token_id] and "secret" not in as_json[0]

    r = runner.invoke(app, ["token", "revoke", token_id])
    assert r.exit_code == 0 and r.stdout.strip() == f"revoked token {token_id} (write on acme)"
    assert "revoked" in runner.invoke(app, ["token", "list"]).stdout
    with Hub() as hub:
        again = hub.authenticate(secret)
    assert again is not None and again.state() == "revoked"


def test_bad_input_is_one_line(lorahub_env: dict[str, str]) -> None:
    cases = [
        (["--scope", "owner", "--namespace", "acme"], "error: scope 'owner' is not one of read, write, admin"),
        (["--scope", "read", "--namespace", "Acme!"], "error: namespace pattern 'Acme!' is not valid"),
        (["--scope", "read", "--namespace", "acme", "--expires", "soon"], "error: 'soon' is not a duration"),
        (["--scope", "read", "--namespace", "acme", "--expires", "0d"], "error: '0d' is not a duration"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["token", "create", *args])
        assert r.exit_code == 2 and r.stderr.startswith(message), (args, r.stderr)
    r = runner.invoke(app, ["token", "revoke", "nope"])
    assert r.exit_code == 2 and r.stderr.startswith("error: no token with id 'nope'")
    assert runner.invoke(app, ["token", "list"]).stdout.strip() == "no tokens"
