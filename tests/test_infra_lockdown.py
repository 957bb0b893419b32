"""Nothing the templates deploy should accept a key or a password: storage, Log Analytics, Application Insights and
the app's publishing endpoints take Microsoft Entra ID only. Also: the app's platform logs reach the workspace,
extraAppSettings cannot slip a setting Flex Consumption rejects past the template, and the workbook is listed under
its Application Insights component.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.bicep import BicepFail, Ref, Template, main_template, module_template

# Resource type -> (property path, the value that refuses local / key-based authentication).
LOCAL_AUTH_OFF: dict[str, tuple[tuple[str, ...], bool]] = {
    "Microsoft.Storage/storageAccounts": (("properties", "allowSharedKeyAccess"), False),
    "Microsoft.OperationalInsights/workspaces": (("properties", "features", "disableLocalAuth"), True),
    "Microsoft.Insights/components": (("properties", "DisableLocalAuth"), True),
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies": (("properties", "allow"), False),
}
MONITORING_TYPES = {"Microsoft.OperationalInsights/workspaces", "Microsoft.Insights/components"}


def deployed_templates(plan: str) -> Iterator[Template]:
    """main.bicep and every module it deploys, each with the parameters main passes it."""
    main = main_template(planSku=plan, documentDbClusterName="c1", enableAlerts=True)
    yield main
    for module in main.decls["module"]:
        yield module_template(main, module, symbols={"cluster": {"properties": {}}})


def created_resources(template: Template) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, body) of each resource the template creates (not `existing`), every item of a loop."""
    for declaration in template.decls["resource"].values():
        if declaration.children[3] == "existing":
            continue
        resource_type = str(declaration.children[2].children[0]).strip("'").split("@")[0]
        body = declaration.children[-1]
        value = template.ev(body.children[1] if body.data == "deploy_condition" else body, {})
        yield from ((resource_type, item) for item in (value if isinstance(value, list) else [value]))


def dig(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


@pytest.mark.parametrize("plan", ["FC1", "EP1"])
def test_every_resource_that_could_take_a_key_should_refuse_local_auth(plan: str) -> None:
    seen: dict[str, list[str]] = {}
    for template in deployed_templates(plan):
        for resource_type, body in created_resources(template):
            if resource_type in LOCAL_AUTH_OFF:
                path, refusing = LOCAL_AUTH_OFF[resource_type]
                assert dig(body, path) is refusing, f"{template.path.name}: {resource_type} {body.get('name')}"
                seen.setdefault(resource_type, []).append(body["name"])

    assert set(seen) == set(LOCAL_AUTH_OFF)  # each kind is deployed, so each check ran
    assert sorted(seen["Microsoft.Web/sites/basicPublishingCredentialsPolicies"]) == ["ftp", "scm"]


def test_monitoring_should_deploy_only_resources_that_refuse_local_auth() -> None:
    monitoring = module_template(main_template(), "monitoring")
    types = [resource_type for resource_type, _ in created_resources(monitoring)]

    assert set(types) >= MONITORING_TYPES
    unchecked = set(types) - set(LOCAL_AUTH_OFF) - {"Microsoft.Authorization/roleAssignments"}
    assert not unchecked, f"monitoring.bicep deploys {unchecked}: add its local-auth property to LOCAL_AUTH_OFF"


@pytest.mark.parametrize("plan", ["FC1", "EP1"])
def test_function_app_should_send_its_platform_logs_and_metrics_to_the_workspace(plan: str) -> None:
    app = module_template(main_template(planSku=plan), "functionApp")
    diagnostics = app.body("resource", "diagnostics")

    assert diagnostics["scope"] == Ref("site")
    assert diagnostics["properties"]["workspaceId"] == "<log-analytics-id>"  # monitoring's logAnalyticsId output
    assert diagnostics["properties"]["logs"] == [{"category": "FunctionAppLogs", "enabled": True}]
    assert diagnostics["properties"]["metrics"] == [{"category": "AllMetrics", "enabled": True}]


@pytest.mark.parametrize("name", ["FUNCTIONS_WORKER_RUNTIME", "functions_worker_runtime", "WEBSITE_CONTENTSHARE"])
def test_extra_settings_should_stop_the_deployment_when_flex_consumption_rejects_them(name: str) -> None:
    extra = {"MY_SETTING": "kept", name: "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/s/)"}
    app = module_template(main_template(extraAppSettings=extra), "functionApp")

    with pytest.raises(BicepFail, match=f"extraAppSettings sets {name}, which Flex Consumption rejects") as refused:
        app.var("appSettings")
    assert "vault" not in str(refused.value)  # the name only, never the value


def test_extra_settings_should_reach_the_app_when_the_plan_accepts_them() -> None:
    extra = {"MY_SETTING": "kept", "FUNCTIONS_WORKER_PROCESS_COUNT": "2"}
    flex = module_template(main_template(extraAppSettings={"MY_SETTING": "kept"}), "functionApp")
    premium = module_template(main_template(planSku="EP1", extraAppSettings=extra), "functionApp")

    assert flex.var("appSettings")["MY_SETTING"] == "kept"
    assert premium.var("appSettings")["FUNCTIONS_WORKER_PROCESS_COUNT"] == "2"  # Premium honours it


def test_workbook_should_be_listed_under_its_application_insights_component() -> None:
    workbook = module_template(main_template(), "workbook")
    body = workbook.body("resource", "workbook")
    component_id = Ref("toLower(applicationInsights.id)")  # lower-cased, as the portal's exports write it

    assert (body["kind"], body["properties"]["category"]) == ("shared", "workbook")
    assert body["properties"]["sourceId"] == component_id
    assert workbook.var("workbookContent")["fallbackResourceIds"] == [component_id]
    assert workbook.decls["resource"]["applicationInsights"].children[3] == "existing"
    assert workbook.body("resource", "applicationInsights")["name"] == "appi-test"
