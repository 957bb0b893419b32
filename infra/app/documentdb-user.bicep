// Registers a managed identity as a Microsoft Entra ID user of an existing Azure DocumentDB (Cosmos DB for MongoDB
// vCore) cluster. The user resource is named by the identity's object (principal) id.
// https://learn.microsoft.com/azure/templates/microsoft.documentdb/2025-09-01/mongoclusters/users
//
// Least privilege: the 2025-09-01 API reference lists only {db: 'admin', role: 'root'} for this resource, so this
// registration makes the identity an administrative user. Microsoft's RBAC page also shows database roles such as
// readWrite registered through the same resource, and non-administrative users created from a Mongo shell
// (https://learn.microsoft.com/azure/documentdb/how-to-connect-role-based-access-control); skip this module
// (leave documentDbClusterName empty) when you manage users that way.
//
// Entra ID must also be enabled on the cluster (authConfig.allowedModes). This template does not patch it, because
// that would mean redeclaring the whole existing cluster; infra/README.md gives the az resource patch command.

@description('Name of the existing cluster.')
param clusterName string

@description('Object (principal) id of the identity to register.')
param principalId string

resource cluster 'Microsoft.DocumentDB/mongoClusters@2025-09-01' existing = {
  name: clusterName
}

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
    roles: [
      {
        db: 'admin'
        role: 'root'
      }
    ]
  }
}

output userName string = user.name
