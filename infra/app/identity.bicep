// The Function App's user-assigned managed identity. It exists before the app, so it can be registered on the
// DocumentDB cluster first, and it survives re-creating the app.
// https://learn.microsoft.com/azure/templates/microsoft.managedidentity/userassignedidentities

@description('Identity name.')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output name string = identity.name
output id string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
