"""Configuration validation: the table of good and bad configs, with the messages a person acts on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.auth.scopes import DOCUMENTDB_SCOPE
from shared.config_loader import load_config
from shared.errors import ConfigError
from tests.conftest import CLIENT_ID, TENANT

URI = "mongodb://db.example.net:27017/"


def endpoint(**overrides: Any) -> dict[str, Any]:
    return {"connection_uri": URI, "database": "shop", "collection": "orders", **overrides}


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "checkpoints": {"connection_uri": URI, "database": "replicator"},
        "streams": [
            {
                "name": "orders",
                "source": endpoint(),
                "estuary": endpoint(connection_uri="mongodb://estuary.example.net/"),
            }
        ],
    }
    base.update(overrides)
    return base


def load(tmp_path: Path, data: dict[str, Any], env: dict[str, str] | None = None):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, environ=env or {})


def problems(tmp_path: Path, data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, env)
    return info.value.problems


def with_source(**fields: Any) -> dict[str, Any]:
    cfg = config()
    cfg["streams"][0]["source"].update(fields)
    return cfg


ENTRA = {"auth_method": "entra", "tenant_id": TENANT}


# ------------------------------------------------------------------------------------------ good configs


def test_config_should_default_to_connection_string_when_auth_method_is_absent(tmp_path):
    cfg = load(tmp_path, config())
    source = cfg.streams[0].source
    assert source.auth_method == "connection_string"
    assert source.scopes == (DOCUMENTDB_SCOPE,)
    assert (source.refresh_before_expiry, source.auth_timeout) == (300.0, 30.0)
    assert (source.retry_max_attempts, source.retry_initial_delay, source.retry_max_delay) == (3, 1.0, 10.0)
    assert source.retry_multiplier == 2.0


def test_config_should_accept_an_existing_connection_string_config_with_password_unchanged(tmp_path):
    uri = "mongodb+srv://admin:p%40ss@cluster.mongocluster.cosmos.azure.com/?tls=true&authMechanism=SCRAM-SHA-256"
    cfg = load(tmp_path, with_source(connection_uri=uri))
    assert cfg.streams[0].source.connection_uri == uri


def test_config_should_inherit_defaults_into_every_endpoint_when_not_overridden(tmp_path):
    data = config(defaults={**ENTRA, "client_id": CLIENT_ID, "refresh_before_expiry": "10m"})
    data["streams"][0]["estuary"]["auth_method"] = "connection_string"
    cfg = load(tmp_path, data)
    assert cfg.checkpoints.auth_method == "entra"
    assert cfg.streams[0].source.client_id == CLIENT_ID
    assert cfg.streams[0].source.refresh_before_expiry == 600.0
    assert cfg.streams[0].estuary.auth_method == "connection_string"


@pytest.mark.parametrize(
    ("text", "seconds"), [("5m", 300.0), ("30s", 30.0), ("1h", 3600.0), ("500ms", 0.5), (45, 45.0), ("2.5s", 2.5)]
)
def test_durations_should_accept_units_or_seconds(tmp_path, text, seconds):
    assert load(tmp_path, with_source(auth_timeout=text)).streams[0].source.auth_timeout == seconds


def test_config_should_expand_setting_references_when_they_are_set(tmp_path):
    cfg = load(tmp_path, with_source(connection_uri="${SOURCE_URI}"), env={"SOURCE_URI": "mongodb://from-env/"})
    assert cfg.streams[0].source.connection_uri == "mongodb://from-env/"


def test_config_should_load_inline_json_from_the_app_setting(tmp_path):
    cfg = load_config(environ={"REPLICATOR_CONFIG": json.dumps(config())})
    assert cfg.streams[0].name == "orders"


def test_config_should_read_the_path_in_the_app_setting_when_no_file_is_given(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config()))
    assert load_config(environ={"REPLICATOR_CONFIG": str(path)}).checkpoints.database == "replicator"


@pytest.mark.parametrize(
    "scope",
    [DOCUMENTDB_SCOPE, "api://mongo-atlas-app/.default", "0b5f6b1c-1f0e-4d8e-9e5e-0d9c1a2b3c4d/.default"],
)
def test_config_should_accept_documentdb_and_custom_audiences(tmp_path, scope):
    assert load(tmp_path, with_source(**ENTRA, scopes=[scope])).streams[0].source.scope == scope


# ------------------------------------------------------------------------------------------ bad configs


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"auth_method": "oidc"}, "streams[0].source.auth_method: must be 'connection_string' or 'entra' (got 'oidc')"),
        ({"auth_method": "entra"}, "streams[0].source.tenant_id: is required when auth_method is 'entra'"),
        ({**ENTRA, "tenant_id": "contoso"}, "streams[0].source.tenant_id: must be a UUID"),
        ({**ENTRA, "client_id": "my-identity"}, "streams[0].source.client_id: must be a UUID"),
        ({**ENTRA, "scopes": []}, "streams[0].source.scopes: must not be empty"),
        ({**ENTRA, "scopes": [DOCUMENTDB_SCOPE, DOCUMENTDB_SCOPE]}, "must hold exactly one scope"),
        ({**ENTRA, "scopes": ["https://ossrdbms-aad.database.windows.net"]}, "must end with '/.default'"),
        ({**ENTRA, "scopes": ["ftp://x/.default"]}, "must be an https:// or api:// application ID URI"),
        ({"refresh_before_expiry": "0s"}, "streams[0].source.refresh_before_expiry: must be positive"),
        ({"auth_timeout": -5}, "streams[0].source.auth_timeout: must be positive"),
        ({"auth_timeout": "5 minutes"}, "streams[0].source.auth_timeout: must be a duration such as"),
        ({"refresh_before_expiry": "2h"}, "streams[0].source.refresh_before_expiry: must be at most 3600"),
        ({"retry_max_attempts": 0}, "streams[0].source.retry_max_attempts: must be at least 1"),
        ({"retry_multiplier": 0.5}, "streams[0].source.retry_multiplier: must be at least 1"),
        ({"retry_initial_delay": "20s"}, "streams[0].source.retry_max_delay: must not be smaller than retry_initial"),
        ({"tenantid": TENANT}, "streams[0].source.tenantid: unknown field (did you mean 'tenant_id'?)"),
        ({"connection_uri": "https://db.example.net"}, "streams[0].source.connection_uri: must start with mongodb://"),
        ({"credential": "magic"}, "streams[0].source.credential: must be 'auto', 'managed_identity' or 'developer'"),
        ({"database": "a.b"}, "streams[0].source.database: must be 1-63 characters"),
        ({"collection": "system.users"}, "streams[0].source.collection: must be non-empty, without '$'"),
        ({"database": None}, "streams[0].source.database: is required for a stream source"),
    ],
)
def test_config_should_reject_with_a_message_naming_the_field(tmp_path, fields, expected):
    found = problems(tmp_path, with_source(**fields))
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("scope", "service"),
    [
        ("https://management.azure.com/.default", "Azure Resource Manager"),
        ("https://storage.azure.com/.default", "Azure Storage"),
        ("https://myaccount.blob.core.windows.net/.default", "Azure Storage"),
        ("https://vault.azure.net/.default", "Azure Key Vault"),
        ("https://graph.microsoft.com/.default", "Microsoft Graph"),
        ("https://database.windows.net/.default", "Azure SQL Database"),
        ("https://cosmos.azure.com/.default", "Azure Cosmos DB for NoSQL"),
        ("https://myaccount.documents.azure.com/.default", "Azure Cosmos DB for NoSQL"),
    ],
)
def test_config_should_reject_scopes_of_other_services_and_name_the_expected_one(tmp_path, scope, service):
    (problem,) = problems(tmp_path, with_source(**ENTRA, scopes=[scope]))
    assert problem.startswith("streams[0].source.scopes: ")
    assert service in problem
    assert f"expects '{DOCUMENTDB_SCOPE}'" in problem


def test_config_should_reject_credentials_in_an_entra_uri_without_echoing_the_password(tmp_path):
    found = problems(tmp_path, with_source(**ENTRA, connection_uri="mongodb://admin:Sup3rS3cret@db.example.net/"))
    assert any("connection_uri: must not contain a user name or password" in p for p in found)
    assert "Sup3rS3cret" not in "\n".join(found)


def test_config_should_reject_auth_options_in_an_entra_uri(tmp_path):
    uri = "mongodb://db.example.net/?authMechanism=MONGODB-OIDC&authMechanismProperties=ENVIRONMENT:azure"
    (problem,) = problems(tmp_path, with_source(**ENTRA, connection_uri=uri))
    assert "remove authmechanism, authmechanismproperties" in problem


def test_config_should_reject_pymongo_builtin_azure_oidc_in_a_connection_string_uri(tmp_path):
    uri = "mongodb://db.example.net/?authMechanism=MONGODB-OIDC&authMechanismProperties=ENVIRONMENT:azure"
    (problem,) = problems(tmp_path, with_source(connection_uri=uri))
    assert "set auth_method: entra instead" in problem


def test_config_should_mark_errors_inherited_from_defaults(tmp_path):
    found = problems(tmp_path, config(defaults={**ENTRA, "tenant_id": "not-a-uuid"}))
    assert "checkpoints.tenant_id: must be a UUID (the Entra directory (tenant) id, e.g. " in found[0]
    assert all("(inherited from defaults.tenant_id)" in p for p in found)
    assert len(found) == 3  # checkpoints, source, estuary


def test_config_should_reject_unknown_fields_in_defaults(tmp_path):
    assert problems(tmp_path, config(defaults={"scope": DOCUMENTDB_SCOPE})) == [
        "defaults.scope: unknown field (did you mean 'scopes'?)"
    ]


def test_config_should_list_every_field_problem_at_once(tmp_path):
    data = with_source(retry_max_attempts=0)
    data["streams"][0]["estuary"]["auth_timeout"] = -1
    data["streams"][0]["name"] = "bad name!"
    found = problems(tmp_path, data)
    assert [p.split(":")[0] for p in found] == [
        "streams[0].name",
        "streams[0].source.retry_max_attempts",
        "streams[0].estuary.auth_timeout",
    ]


def test_config_should_reject_duplicate_stream_names(tmp_path):
    data = config()
    data["streams"].append({**data["streams"][0]})
    assert "streams[1].name: duplicate stream name 'orders' (also streams[0])" in problems(tmp_path, data)


def test_config_should_reject_an_estuary_that_is_the_source_collection(tmp_path):
    data = config()
    data["streams"][0]["estuary"] = endpoint()
    assert "streams[0].estuary: is the source collection itself; replicating onto itself would loop" in problems(
        tmp_path, data
    )


def test_config_should_accept_same_named_collections_on_servers_that_differ_only_by_port(tmp_path):
    data = config()
    data["streams"][0]["source"] = endpoint(connection_uri="mongodb://127.0.0.1:27018/")
    data["streams"][0]["estuary"] = endpoint(connection_uri="mongodb://127.0.0.1:27019/")
    assert load(tmp_path, data).streams[0].estuary.connection_uri == "mongodb://127.0.0.1:27019/"


def test_config_should_require_at_least_one_stream_and_a_checkpoint_database(tmp_path):
    found = problems(tmp_path, {"checkpoints": {"connection_uri": URI}, "streams": []})
    assert "checkpoints.database: is required for the checkpoint store" in found
    assert "streams: must not be empty" in found


def test_config_should_reject_different_token_settings_for_one_identity(tmp_path):
    data = config(defaults=ENTRA)
    data["streams"][0]["source"]["auth_timeout"] = "5s"
    (problem,) = problems(tmp_path, data)
    assert problem.startswith("streams[0].source: token settings (refresh_before_expiry, auth_timeout, retry_*)")
    assert "differ from checkpoints" in problem


def test_config_should_name_a_missing_setting_reference(tmp_path):
    assert problems(tmp_path, with_source(connection_uri="${NOT_SET}")) == [
        "streams[0].source.connection_uri: references ${NOT_SET}, but the setting / environment variable NOT_SET "
        "is not set"
    ]


def test_config_should_say_when_nothing_is_configured():
    with pytest.raises(ConfigError) as info:
        load_config(environ={})
    assert "REPLICATOR_CONFIG" in (info.value.hint or "")


def test_config_should_report_a_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", environ={})
    assert info.value.problems == [f"file not found: {tmp_path / 'nope.yaml'}"]


def test_config_should_not_echo_the_offending_line_when_yaml_is_broken(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('checkpoints:\n  connection_uri: "mongodb://u:Sup3rS3cret@h/\n  database: [x\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "not valid YAML at line" in str(info.value)
    assert "Sup3rS3cret" not in str(info.value)


def test_config_should_reject_a_top_level_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "the top level must be a mapping" in info.value.problems[0]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        ({"lease_duration": 30, "write_timeout": 20}, "streams[0].write_timeout: must be at most half of lease"),
        ({"fencing": "optimistic"}, "streams[0].fencing: must be 'auto', 'transaction' or 'deadline'"),
    ],
)
def test_config_should_reject_fencing_settings_that_cannot_protect_the_estuary(tmp_path, stream, expected):
    data = config()
    data["streams"][0].update(stream)
    found = problems(tmp_path, data)
    assert any(expected in p for p in found), found


def test_the_write_timeout_should_default_to_a_third_of_the_lease(tmp_path):
    data = config()
    data["streams"][0]["lease_duration"] = 45
    stream = load(tmp_path, data).streams[0]
    assert (stream.fencing, stream.write_timeout, stream.estuary_write_timeout) == ("auto", None, 15.0)
