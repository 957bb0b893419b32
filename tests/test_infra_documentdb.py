"""The identity's registration on a DocumentDB cluster: least-privilege roles derived from the streams the app
replicates, root only when asked for, ordered after the app, and a clear stop when the cluster refuses Entra ID.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared.config_loader import load_config
from tests.bicep import INFRA, PRINCIPAL_ID, ROOT, BicepFail, ParameterRejected, Ref, Template, main_template
from tests.bicep import module_template as module

ENTRA_CLUSTER = {"properties": {"authConfig": {"allowedModes": ["NativeAuth", "MicrosoftEntraID"]}}}
STREAMS = [
    {"name": "a", "sourceDatabase": "shop", "sourceCollection": "orders"},
    {"name": "b", "sourceDatabase": "shop", "sourceCollection": "items"},
    {"name": "c", "sourceDatabase": "crm", "sourceCollection": "people"},
    {"name": "d", "sourceDatabase": "estuary", "sourceCollection": "x", "estuaryDatabase": "shop"},
]


def user_module(symbols: dict[str, Any] | None = None, **main_params: Any) -> Template:
    main = main_template(documentDbClusterName="c1", **main_params)
    return module(main, "documentDbUser", symbols={"cluster": ENTRA_CLUSTER} if symbols is None else symbols)


def roles_of(user: Template) -> list[dict[str, str]]:
    roles = user.body("resource", "user")["properties"]["roles"]
    assert isinstance(roles, list)
    return roles


def test_user_should_be_the_identity_by_its_principal_id_with_least_privilege_by_default() -> None:
    user = user_module()
    body = user.body("resource", "user")

    assert user.body("resource", "cluster")["name"] == "c1"
    assert body["name"] == PRINCIPAL_ID
    assert body["properties"]["identityProvider"] == {
        "type": "MicrosoftEntraID",
        "properties": {"principalType": "servicePrincipal"},
    }
    assert roles_of(user) == [
        {"db": "shop", "role": "read"},
        {"db": "estuary", "role": "readWrite"},
        {"db": "replicator", "role": "readWrite"},
    ]


def test_default_roles_should_cover_exactly_the_databases_the_deployed_config_uses() -> None:
    streams = [{"estuaryDatabase": "estuary", "estuaryCollection": s["name"], **s} for s in STREAMS]
    main = main_template(documentDbClusterName="c1", streams=streams, checkpointsDatabase="state")
    settings = module(main, "functionApp").var("appSettings")
    config = load_config(environ={k: str(v) for k, v in settings.items()})
    written = {s.estuary.database for s in config.streams} | {config.checkpoints.database}
    read = {s.source.database for s in config.streams} - written

    roles = roles_of(module(main, "documentDbUser", symbols={"cluster": ENTRA_CLUSTER}))
    assert {r["db"] for r in roles if r["role"] == "readWrite"} == written == {"estuary", "shop", "state"}
    assert {r["db"] for r in roles if r["role"] == "read"} == read == {"crm"}
    assert len(roles) == len({r["db"] for r in roles})  # one role per database: readWrite wins over read


@pytest.mark.parametrize(
    "roles",
    [
        [{"db": "admin", "role": "root"}],
        [{"db": "admin", "role": "readAnyDatabase"}, {"db": "out", "role": "readWrite"}],
    ],
    ids=["root", "custom"],
)
def test_explicit_roles_should_be_registered_as_given(roles: list[dict[str, str]]) -> None:
    assert roles_of(user_module(documentDbRoles=roles)) == roles


def test_registration_should_wait_for_the_function_app() -> None:
    main = main_template(documentDbClusterName="c1", documentDbResourceGroupName="rg-data")
    declaration = main.body("module", "documentDbUser")

    assert main.decls["module"]["documentDbUser"].children[-1].data == "deploy_condition"
    assert declaration["dependsOn"] == [Ref("functionApp")]
    assert declaration["scope"] == Ref("resourceGroup(rg-data)")
    assert declaration["params"]["principalId"] == PRINCIPAL_ID


@pytest.mark.parametrize("modes", [["NativeAuth"], []])
def test_registration_should_stop_with_the_fix_when_the_cluster_refuses_entra(modes: list[str]) -> None:
    user = user_module(symbols={"cluster": {"properties": {"authConfig": {"allowedModes": modes}}}})
    with pytest.raises(BicepFail, match=r"^Cluster c1 does not accept Microsoft Entra ID .* step 1"):
        roles_of(user)


@pytest.mark.parametrize(
    "cluster",
    [ENTRA_CLUSTER, {"properties": {"authConfig": {"allowedModes": ["MicrosoftEntraID"]}}}, {"properties": {}}],
    ids=["entra-and-native", "entra-only", "modes-not-reported"],
)
def test_registration_should_go_ahead_when_the_cluster_accepts_entra_or_does_not_say(cluster: dict[str, Any]) -> None:
    assert roles_of(user_module(symbols={"cluster": cluster}))


def test_user_module_should_deploy_on_its_own_with_cluster_principal_and_roles() -> None:
    standalone = Template(INFRA / "app" / "documentdb-user.bicep")
    required = {p for p in standalone.decls["param"] if standalone.param_default(p) is None}

    assert required == {"clusterName", "principalId", "roles"}
    with pytest.raises(ParameterRejected, match="roles"):
        Template(standalone.path, {"clusterName": "c", "principalId": PRINCIPAL_ID, "roles": []}).lookup("roles", {})


def test_readme_should_register_other_clusters_with_the_module_and_its_parameters() -> None:
    readme = (ROOT / "infra" / "README.md").read_text(encoding="utf-8")
    command = re.search(r"az deployment group create [^`]*?-f infra/app/documentdb-user\.bicep[^`]*", readme)

    assert command, "infra/README.md step 4 should deploy infra/app/documentdb-user.bicep"
    assert set(re.findall(r"\b(\w+)=", command.group(0))) == {"clusterName", "principalId", "roles"}
