"""Local stand-ins for the Azure pieces that cannot run on a development machine or in CI.

Test and demo tooling, never deployed: ``ManagedIdentityStub`` plays the Functions managed identity endpoint,
``NxServer`` runs a real MongoDB wire-protocol server (nx-27017) as a child process, ``OIDCProxy`` sits in
front of it enforcing MONGODB-OIDC the way an Entra-enabled cluster does, and ``Azurite`` runs Microsoft's
Azure Storage emulator for the Functions queue. Together they let the real
azure-identity credential and the real pymongo OIDC code run end to end without Azure.
"""

from __future__ import annotations

from localdev.standins.azurite import Azurite
from localdev.standins.mi_stub import ManagedIdentityStub
from localdev.standins.nx import NxServer
from localdev.standins.oidc_proxy import OIDCProxy

__all__ = ["Azurite", "ManagedIdentityStub", "NxServer", "OIDCProxy"]
