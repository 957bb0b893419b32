// The host's storage account, reachable only with Entra ID: shared keys off, so no connection string can exist.
// Holds the Flex deployment container (or the Premium package), the host's own blobs/tables (timer locks, keys)
// and the work queue with its poison queue.
// Identity-based host storage: https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity
// Roles: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles

@description('Storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object = {}

@description('Blob container of the deployment package (3-63 characters).')
@minLength(3)
@maxLength(63)
param deploymentContainerName string

@description('Work queue name; <name>-poison is created too, and a queue name holds at most 63 characters.')
@minLength(3)
@maxLength(56)
param queueName string

@description('Principal (object) id of the Function App identity.')
param identityPrincipalId string

@description('Optional principal that uploads packages and inspects queues; empty grants nothing.')
param operatorPrincipalId string = ''

@description('Type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

// Built-in role definition ids (design brief §2; built-in-roles page above).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

// The host needs blob (deployment package, timer and singleton locks, function keys), queue (our work queue and
// the host's internal queues) and table access; the Flex quickstart grants the same three roles.
var identityRoles = [
  storageBlobDataOwner
  storageQueueDataContributor
  storageTableDataContributor
]
var operatorRoles = empty(operatorPrincipalId) ? [] : [
  storageBlobDataContributor
  storageQueueDataContributor
]
var queueNames = [
  queueName
  '${queueName}-poison'
]

// https://learn.microsoft.com/azure/templates/microsoft.storage/2023-05-01/storageaccounts
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    // No account keys: every client (host, deployment, operators) authenticates with Entra ID.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

// The host would create both on first use; creating them here lets operators watch the poison queue from day one.
resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for q in queueNames: {
  parent: queueService
  name: q
}]

resource identityAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in identityRoles: {
  name: guid(storage.id, identityPrincipalId, roleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

resource operatorAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in operatorRoles: {
  name: guid(storage.id, operatorPrincipalId, roleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}]

output name string = storage.name
output deploymentContainerName string = deploymentContainer.name
output queueName string = queues[0].name
