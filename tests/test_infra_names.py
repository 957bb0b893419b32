"""Every name main.bicep derives should be one Azure accepts, whatever a user types into baseName, functionAppName
or queueName; a value no valid name can come from should stop the deployment before anything is created.

The rules below are written from Microsoft's naming pages, independently of the template
(https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules,
https://learn.microsoft.com/rest/api/storageservices/naming-queues-and-metadata,
https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata).
"""

from __future__ import annotations

import re

import pytest

from tests.bicep import BicepFail, ParameterRejected, Template, main_template, module_template

# A blob container or a queue: 3-63 lowercase letters, digits and hyphens, starting and ending with a letter or digit,
# every hyphen between two letters or digits.
STORAGE_CHILD = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
NAME_RULES = {
    "deploymentContainerName": lambda n: 3 <= len(n) <= 63 and STORAGE_CHILD.fullmatch(n),
    "storageAccountName": lambda n: re.fullmatch(r"[a-z0-9]{3,24}", n),
    "appName": lambda n: re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,58}[a-z0-9])?", n),  # sites: 2-60, no edge hyphen
    "identityName": lambda n: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{2,127}", n),
    "planName": lambda n: re.fullmatch(r"[A-Za-z0-9-]{1,60}", n),
    "logAnalyticsName": lambda n: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{2,61}[A-Za-z0-9]", n),
    "applicationInsightsName": lambda n: 1 <= len(n) <= 260 and not re.search(r"[%&\\?/]|[ .]$", n),
}
# What isLowercaseLabel in main.bicep promises, as a regular expression.
LABEL = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
HOSTILE = ["my_app", "my.app", "-app", "app-", "a--b", "ap p", "app\t", "äpp", "app/x", "APP!", "", "-", "a-"]
# 40 characters whose 32nd is a hyphen: take(name, 32) then ends in '-', the case that put '--' in the container.
HYPHEN_AT_32 = "a" * 31 + "-" + "b" * 8


def derived_names(main: Template) -> dict[str, str]:
    return {name: main.var(name) for name in NAME_RULES}


@pytest.mark.parametrize("text", ["abc", "a1", "my-app", "a-b-c", "0app", *HOSTILE, "Abc", "a" * 70])
def test_label_check_should_agree_with_the_regular_expression_when_given_any_text(text: str) -> None:
    assert main_template().call_user_function("isLowercaseLabel", [text]) == bool(LABEL.fullmatch(text))


@pytest.mark.parametrize("base_name", ["mongorepl", "abc", "my-app", "MyApp", "a1-b2-c3-d4e", "123"])
@pytest.mark.parametrize("app_name", ["", "replicator-prod", HYPHEN_AT_32, "Func-" + "x" * 55, "ab"])
def test_every_derived_name_should_follow_azure_rules_when_the_parameters_are_valid(
    base_name: str, app_name: str
) -> None:
    main = main_template(baseName=base_name, functionAppName=app_name)
    broken = {name: value for name, value in derived_names(main).items() if not NAME_RULES[name](value)}
    assert not broken
    module_template(main, "storage")  # the storage module's own bounds accept what main passes


def test_container_should_lose_the_trailing_hyphen_when_the_app_name_is_cut_at_32() -> None:
    main = main_template(functionAppName=HYPHEN_AT_32)
    token = main.var("resourceToken")

    assert main.var("appName") == HYPHEN_AT_32
    assert main.var("deploymentContainerName") == f"app-package-{'a' * 31}-{token[:7]}"


def test_derived_names_should_stay_as_before_when_base_name_is_valid() -> None:
    main = main_template(baseName="MyApp")
    token = main.var("resourceToken")

    # The formulas of the previous release: an existing deployment must keep its resources.
    assert main.var("appName") == f"func-myapp-{token}"
    assert (main.var("identityName"), main.var("planName")) == (f"id-MyApp-{token}", f"plan-MyApp-{token}")
    assert main.var("storageAccountName") == f"stmyapp{token}"[:24]
    assert main.var("deploymentContainerName") == f"app-package-func-myapp-{token}-{token[:7]}"


@pytest.mark.parametrize("base_name", [n for n in HOSTILE if 3 <= len(n) <= 12])
def test_base_name_should_stop_the_deployment_when_no_resource_could_carry_it(base_name: str) -> None:
    with pytest.raises(BicepFail, match=r"^baseName .* letters, digits and single hyphens"):
        main_template(baseName=base_name).var("storageAccountName")


@pytest.mark.parametrize("base_name", ["ab", "a" * 13])
def test_base_name_should_be_refused_by_its_bounds_when_too_short_or_too_long(base_name: str) -> None:
    with pytest.raises(ParameterRejected, match="baseName"):
        main_template(baseName=base_name).var("appName")


@pytest.mark.parametrize("app_name", [n for n in HOSTILE if n] + ["a", "x" * 30 + "--" + "y" * 8])
def test_function_app_name_should_stop_the_deployment_when_it_is_no_host_name(app_name: str) -> None:
    with pytest.raises(BicepFail, match=r"^functionAppName .* or leave it empty"):
        main_template(functionAppName=app_name).var("appName")


def test_function_app_name_should_be_checked_only_when_given() -> None:
    main = main_template(functionAppName="")
    assert main.var("customAppNameIsValid") is False  # evaluated, but nothing fails: the derived name is used
    assert main.var("appName").startswith("func-mongorepl-")


@pytest.mark.parametrize("queue", [n for n in HOSTILE if 3 <= len(n) <= 56] + ["Replicator-Passes", "rep--passes"])
def test_queue_name_should_stop_the_deployment_when_it_is_no_queue_name(queue: str) -> None:
    with pytest.raises(BicepFail, match=r"^queueName .* lowercase letters, digits and single hyphens"):
        main_template(queueName=queue).body("module", "storage")


@pytest.mark.parametrize("queue", ["abc", "replicator-passes", "q" * 56])
def test_queue_and_its_poison_queue_should_be_valid_when_the_queue_name_is(queue: str) -> None:
    storage = module_template(main_template(queueName=queue), "storage")
    names = storage.var("queueNames")

    assert names == [queue, f"{queue}-poison"]
    assert all(3 <= len(n) <= 63 and STORAGE_CHILD.fullmatch(n) for n in names)


def test_queue_name_should_be_refused_by_its_bounds_when_the_poison_queue_would_be_too_long() -> None:
    with pytest.raises(ParameterRejected, match="queueName"):
        main_template(queueName="q" * 57).body("module", "storage")
