// Registers a managed identity as a Microsoft Entra ID user of an existing Azure DocumentDB (Cosmos DB for MongoDB
// vCore) cluster, with the MongoDB roles it is given. The user resource is named by the identity's object
// (principal) id. main.bicep deploys it after the app; it also deploys on its own, into the cluster's resource group,
// for each cluster the app uses (infra/README.md, step 4).
// https://learn.microsoft.com/azure/templates/microsoft.documentdb/2025-09-01/mongoclusters/users
//
// Roles: the 2025-09-01 specification types DatabaseRole.role as an extensible enum (modelAsString) whose one listed
// value is 'root', and Microsoft's role-based access control page registers {db: 'sales', role: 'readWrite'}
// through this same resource: https://learn.microsoft.com/azure/documentdb/how-to-connect-role-based-access-control
// main.bicep passes read / readWrite per database by default; [{db: 'admin', role: 'root'}] makes an administrator.
//
// Entra ID must be enabled on the cluster (authConfig.allowedModes). This template does not patch it, because that
// would mean redeclaring the whole existing cluster; infra/README.md gives the az resource patch command.

@description('Name of the existing cluster.')
param clusterName string

@description('Object (principal) id of the identity to register.')
param principalId string

@description('MongoDB roles of the user, as [{db, role}]: e.g. read on a source database and readWrite on the estuary and checkpoint databases, or [{db: admin, role: root}] for an administrator.')
@minLength(1)
param roles array

resource cluster 'Microsoft.DocumentDB/mongoClusters@2025-09-01' existing = {
  name: clusterName
}

// A cluster that reports its allowedModes without MicrosoftEntraID would refuse the user; stop with the fix instead of
// the resource provider's error. A cluster that reports none goes ahead (the PUT then says what is wrong).
var allowedModes = (cluster.properties.?authConfig.?allowedModes) ?? [
  'MicrosoftEntraID'
]
var entraEnabled = contains(allowedModes, 'MicrosoftEntraID')

resource user 'Microsoft.DocumentDB/mongoClusters/users@2025-09-01' = {
  parent: cluster
  name: principalId
  properties: {
    identityProvider: {
      type: 'MicrosoftEntraID'
      properties: {
        principalType: 'servicePrincipal'
      }
    }
    roles: entraEnabled ? roles : fail('Cluster ${clusterName} does not accept Microsoft Entra ID (authConfig.allowedModes lacks MicrosoftEntraID): enable it as infra/README.md step 1 shows, then run the deployment again.')
  }
}

output userName string = user.name
