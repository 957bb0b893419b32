"""The Bicep under infra/ should deploy what the app reads, as the identity it authenticates with, and no secret.

Every file parses with pycep; the templates are evaluated by ``Template`` (tests/bicep.py) with parameter values
chosen by each test. Elsewhere: the KQL queries, the workbook and the alerts in tests/test_infra_queries.py; local
authentication, publishing credentials and diagnostics in tests/test_infra_lockdown.py; names from hostile
parameters in tests/test_infra_names.py; the cluster registration in tests/test_infra_documentdb.py. What only Azure
can check (API versions, property names, RBAC and platform behaviour) is listed in infra/README.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.functions.decorators.function_app import FunctionBuilder
from lark import Token

import function_app
from shared.config_loader import load_config
from shared.telemetry import APPINSIGHTS_SETTING
from tests.bicep import (
    BICEP_FILES,
    CLIENT_ID,
    INFRA,
    PRINCIPAL_ID,
    SOURCE_URI,
    TENANT,
    Ref,
    Template,
    main_template,
    module_template,
    parser,
)

# What the Flex Consumption documentation names (function-app.bicep keeps the full list, flexRejectedSettings).
FLEX_REJECTS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
}
ROLE = {
    "blob_owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "queue_contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "table_contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "metrics_publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
SECRET_NAME = re.compile(r"password|secret|key|connectionstring", re.IGNORECASE)
SECRET_VALUE = re.compile(
    r"AccountKey=|SharedAccessSignature=|sig=|mongodb(\+srv)?://[^/@\s]+:[^/@\s]+@", re.IGNORECASE
)
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def deployed_app(**main_params: Any) -> tuple[Template, dict[str, Any]]:
    """main.bicep evaluated with these parameters, then function-app.bicep with what main passes it."""
    app = module_template(main_template(**main_params), "functionApp")
    settings = app.var("appSettings")
    assert isinstance(settings, dict)
    return app, settings


def settings_the_code_reads(replicator_config: str) -> set[str]:
    """App settings named by the code: binding expressions, connections, config and telemetry settings."""
    names = {"REPLICATOR_CONFIG", APPINSIGHTS_SETTING, "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"}
    names |= set(_INTERPOLATION.findall(replicator_config))
    # Built one by one: azure-functions allows a single app.get_functions() per app object.
    builders = [v for v in vars(function_app).values() if isinstance(v, FunctionBuilder)]
    assert builders, "function_app.py declares no functions"
    for builder in builders:
        for binding in builder.build().get_bindings_dict()["bindings"]:
            names |= {m for v in binding.values() if isinstance(v, str) for m in re.findall(r"%(\w+)%", v)}
            if "connection" in binding:
                # Identity-based connection: https://learn.microsoft.com/azure/azure-functions/functions-reference
                prefix = binding["connection"]
                names |= {f"{prefix}__credential", f"{prefix}__clientId", f"{prefix}__queueServiceUri"}
    # The host's own storage (timer locks, keys) also needs the blob and table endpoints.
    names |= {"AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__tableServiceUri"}
    return names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_should_parse_with_pycep(path: Path) -> None:
    assert parser().parse(file_path=path)


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_modules_should_exist_and_get_exactly_their_parameters(path: Path) -> None:
    template = Template(path)
    for name, module in template.decls["module"].items():
        target = Template(path.parent / str(module.children[2].children[0])[1:-1])
        passed = template.module_param_names(name)
        declared = set(target.decls["param"])
        required = {p for p in declared if target.param_default(p) is None}
        assert passed <= declared, f"{name}: unknown parameters {passed - declared}"
        assert required <= passed, f"{name}: missing parameters {required - passed}"


@pytest.mark.parametrize("plan", ["FC1", "EP1"])
def test_template_should_set_every_app_setting_the_code_reads(plan: str) -> None:
    _, settings = deployed_app(planSku=plan)
    missing = settings_the_code_reads(settings["REPLICATOR_CONFIG"]) - set(settings)
    assert not missing
    assert settings["REPLICATOR_QUEUE"] == "q-test"  # the queue the storage module created
    assert settings["REPLICATOR_SCHEDULE"] == "0 */1 * * * *"
    assert (settings["AZURE_CLIENT_ID"], settings["AZURE_TENANT_ID"]) == (Ref("identity.properties.clientId"), TENANT)


@pytest.mark.parametrize(
    "main_params",
    [
        {},
        {"estuaryMongoUri": "mongodb+srv://estuary.global.mongocluster.cosmos.azure.com/"},
        {
            "streams": [
                {
                    **dict.fromkeys(["sourceDatabase", "estuaryDatabase"], "shop"),
                    "name": "a",
                    "sourceCollection": "a",
                    "estuaryCollection": "b",
                    "options": {"initial_sync": True, "on_history_lost": "start_now"},
                }
            ]
        },
    ],
    ids=["defaults", "separate-estuary", "stream-options"],
)
def test_inline_config_should_validate_with_the_apps_own_loader_for_entra(main_params: dict[str, Any]) -> None:
    _, settings = deployed_app(**main_params)
    config = load_config(environ={k: str(v) for k, v in settings.items()})

    for _, endpoint in config.endpoints():
        assert (endpoint.auth_method, endpoint.credential) == ("entra", "managed_identity")
        assert (endpoint.tenant_id, endpoint.client_id) == (TENANT, CLIENT_ID)
    stream = config.streams[0]
    assert stream.source.connection_uri == SOURCE_URI
    assert stream.estuary.connection_uri == main_params.get("estuaryMongoUri", SOURCE_URI)
    assert config.checkpoints.connection_uri == stream.estuary.connection_uri
    assert config.checkpoints.database == "replicator"
    if "streams" in main_params:
        assert (stream.initial_sync, stream.on_history_lost) == (True, "start_now")


def test_inline_config_should_validate_with_connection_strings_from_settings() -> None:
    _, settings = deployed_app(mongoAuthMethod="connection_string", sourceMongoUri="mongodb://db.example:27017/")
    config = load_config(environ={k: str(v) for k, v in settings.items()})
    assert {e.auth_method for _, e in config.endpoints()} == {"connection_string"}
    assert "db.example" not in settings["REPLICATOR_CONFIG"]  # the URI stays in its own setting


@pytest.mark.parametrize("plan", ["FC1", "EP1"])
def test_function_app_should_run_as_the_user_assigned_identity(plan: str) -> None:
    app, settings = deployed_app(planSku=plan)
    site = app.body("resource", "site")
    identity_id, client_id = Ref("identity.id"), Ref("identity.properties.clientId")

    assert app.body("resource", "identity")["name"] == "id-test"  # main's identity module
    assert site["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}}
    assert site["properties"]["keyVaultReferenceIdentity"] == identity_id
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == client_id
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == f"Authorization=AAD;ClientId={client_id}"
    assert "AzureWebJobsStorage" not in settings  # no connection string form at all
    if plan == "FC1":
        storage = site["properties"]["functionAppConfig"]["deployment"]["storage"]
        assert storage["authentication"] == {
            "type": "UserAssignedIdentity",
            "userAssignedIdentityResourceId": identity_id,
        }
    else:
        assert settings["WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID"] == identity_id


def test_flex_path_should_set_function_app_config_and_nothing_flex_rejects() -> None:
    app, settings = deployed_app(planSku="FC1")
    site, plan = app.body("resource", "site"), app.body("resource", "plan")

    assert not FLEX_REJECTS & set(settings)
    assert set(app.var("flexRejectedSettings")) >= FLEX_REJECTS
    assert not {"linuxFxVersion", "alwaysOn"} & set(site["properties"]["siteConfig"])
    assert (plan["sku"], plan["properties"]["reserved"]) == ({"name": "FC1", "tier": "FlexConsumption"}, True)
    assert site["kind"] == "functionapp,linux"
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["scaleAndConcurrency"]["instanceMemoryMB"] == 2048
    assert config["deployment"]["storage"]["value"] == "<storage.properties.primaryEndpoints.blob>app-package-test"


def test_premium_path_should_run_from_a_package_blob_without_azure_files() -> None:
    app, settings = deployed_app(planSku="EP1")
    site, plan = app.body("resource", "site"), app.body("resource", "plan")

    assert plan["sku"] == {"name": "EP1", "tier": "ElasticPremium", "family": "EP"}
    assert site["properties"]["functionAppConfig"] is None
    assert site["properties"]["siteConfig"]["linuxFxVersion"] == "Python|3.11"
    assert (settings["FUNCTIONS_WORKER_RUNTIME"], settings["FUNCTIONS_EXTENSION_VERSION"]) == ("python", "~4")
    assert settings["WEBSITE_RUN_FROM_PACKAGE"].endswith("app-package-test/replicator.zip")
    # Azure Files takes only an account-key connection string, which a shared-key-free account cannot give.
    assert not {"WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE"} & set(settings)


def test_storage_and_monitoring_should_grant_the_identity_its_roles_and_nobody_else() -> None:
    main = main_template()
    storage = module_template(main, "storage")
    account = storage.body("resource", "storage")["properties"]

    assert (account["minimumTlsVersion"], account["allowBlobPublicAccess"]) == ("TLS1_2", False)
    assert storage.var("queueNames") == ["replicator-passes", "replicator-passes-poison"]
    assignments = storage.ev(storage.decls["resource"]["identityAssignments"].children[-1], {})
    assert {a["properties"]["principalId"] for a in assignments} == {PRINCIPAL_ID}
    granted = {a["properties"]["roleDefinitionId"].rsplit("/", 1)[1] for a in assignments}
    assert granted == {ROLE["blob_owner"], ROLE["queue_contributor"], ROLE["table_contributor"]}
    assert storage.var("operatorRoles") == []  # nobody else unless operatorPrincipalId is given

    monitoring = module_template(main, "monitoring")
    publisher = monitoring.body("resource", "metricsPublisher")
    assert publisher["properties"]["roleDefinitionId"].endswith(ROLE["metrics_publisher"])
    assert publisher["properties"]["principalId"] == PRINCIPAL_ID


def _all_declarations() -> Iterator[tuple[Template, str, str]]:
    for path in BICEP_FILES:
        template = Template(path)
        for kind in ("param", "output"):
            for name in template.decls[kind]:
                yield template, kind, name


def test_no_parameter_default_or_output_should_look_secret() -> None:
    for template, kind, name in _all_declarations():
        where = f"{template.path.relative_to(INFRA)} {kind} {name}"
        node = template.decls[kind][name]
        if kind == "output":
            assert not SECRET_NAME.search(name), where
            tokens = {str(t) for t in node.children[-1].scan_values(lambda v: isinstance(v, Token))}
            secure = {p for p in template.decls["param"] if "secure" in template.decorators(p)}
            assert not tokens & (secure | {"listKeys", "ConnectionString", "InstrumentationKey"}), where
            continue
        default = template.param_default(name)
        if SECRET_NAME.search(name):
            assert "secure" in template.decorators(name), where
        if default is not None:
            value = json.dumps(template.ev(default, {}), default=str)
            assert not SECRET_VALUE.search(value), where
            assert "secure" not in template.decorators(name) or value in ('""', "{}"), where
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert not SECRET_VALUE.search(json.dumps(parameters))
    assert not {n for n in parameters if SECRET_NAME.search(n)}


def test_parameters_file_should_name_only_declared_parameters() -> None:
    declared = set(Template(INFRA / "main.bicep").decls["param"])
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(parameters) <= declared
