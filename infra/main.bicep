// The change-stream replicator on Azure Functions: a Linux Python 3.11 Function App (Flex Consumption by default,
// Elastic Premium on request), its user-assigned managed identity, identity-only storage, Application Insights with
// Entra ingestion, a workbook, optional alerts and the optional registration of the identity on a DocumentDB cluster.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json \
//     -p sourceMongoUri='mongodb+srv://<cluster>.global.mongocluster.cosmos.azure.com/'
//
// Layout follows Azure-Samples/functions-quickstart-python-http-azd (main.bicep + small app/*.bicep modules).
// Every resource is deployed at resource-group scope. infra/README.md explains every parameter.
targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------------- parameters

@description('Region of every resource. Flex Consumption is not offered everywhere: az functionapp list-flexconsumption-locations.')
param location string = resourceGroup().location

@description('Short name used to derive resource names: 3-12 letters, digits and single hyphens, starting and ending with a letter or digit.')
@minLength(3)
@maxLength(12)
param baseName string = 'mongorepl'

@description('Function App name; empty derives func-<baseName>-<token>. Otherwise 2-60 letters, digits and single hyphens, starting and ending with a letter or digit (lower-cased). It is also the host name <name>.azurewebsites.net.')
@maxLength(60)
param functionAppName string = ''

@description('FC1 = Flex Consumption (default). EP1/EP2/EP3 = Elastic Premium, run from a package in blob storage without Azure Files (see infra/README.md).')
@allowed([
  'FC1'
  'EP1'
  'EP2'
  'EP3'
])
param planSku string = 'FC1'

@description('Flex Consumption: most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 20

@description('Flex Consumption: memory of each instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Elastic Premium: most workers the plan scales out to.')
@minValue(1)
@maxValue(100)
param maximumElasticWorkerCount int = 5

@description('Elastic Premium: name of the package blob (in the deployment container) the app runs from.')
param premiumPackageBlobName string = 'replicator.zip'

@description('Storage queue of pass requests (REPLICATOR_QUEUE): lowercase letters, digits and single hyphens, starting and ending with a letter or digit. The host appends -poison to a name of at most 63 characters, so at most 56.')
@minLength(3)
@maxLength(56)
param queueName string = 'replicator-passes'

@description('NCRONTAB schedule (with seconds) of the timer that enqueues one pass per enabled stream (REPLICATOR_SCHEDULE).')
param schedule string = '0 */1 * * * *'

@description('How every MongoDB connection authenticates: entra (MONGODB-OIDC with the managed identity) or connection_string.')
@allowed([
  'entra'
  'connection_string'
])
param mongoAuthMethod string = 'entra'

@description('SOURCE_MONGODB_URI. With entra: mongodb+srv://<cluster>.global.mongocluster.cosmos.azure.com/ (no secret). With a password: a Key Vault reference @Microsoft.KeyVault(SecretUri=...), never the URI itself.')
@secure()
param sourceMongoUri string

@description('ESTUARY_MONGODB_URI; empty means the source cluster. Same rules as sourceMongoUri.')
@secure()
param estuaryMongoUri string = ''

@description('CHECKPOINTS_MONGODB_URI; empty means the estuary cluster. Same rules as sourceMongoUri.')
@secure()
param checkpointsMongoUri string = ''

@description('Database of the checkpoint store (collections checkpoints and dead_letters).')
param checkpointsDatabase string = 'replicator'

@description('Streams of REPLICATOR_CONFIG: name, sourceDatabase, sourceCollection, estuaryDatabase, estuaryCollection and optional options (more stream fields, e.g. {initial_sync: true}).')
param streams array = [
  {
    name: 'orders'
    sourceDatabase: 'shop'
    sourceCollection: 'orders'
    estuaryDatabase: 'estuary'
    estuaryCollection: 'orders'
  }
]

@description('Existing Azure DocumentDB (Cosmos DB for MongoDB vCore) cluster on which to register the identity; empty skips it.')
param documentDbClusterName string = ''

@description('Resource group of that cluster; empty means this resource group.')
param documentDbResourceGroupName string = ''

@description('Roles of the identity on documentDbClusterName, as [{db, role}]. Empty derives the least the app needs: read on every source database, readWrite on every estuary database and on checkpointsDatabase. [{"db": "admin", "role": "root"}] makes it an administrator.')
param documentDbRoles array = []

@description('Object id of a person, group or CI principal that publishes (Premium package upload) and inspects queues; empty grants nothing.')
param operatorPrincipalId string = ''

@description('Type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@description('Days Log Analytics keeps the telemetry.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Create the two log search alerts (replication lag, Entra auth failures).')
param enableAlerts bool = false

@description('Action group notified by the alerts; empty fires them without notification.')
param alertActionGroupId string = ''

@description('Lag alert: fires when a stream lags more than this many seconds.')
@minValue(1)
param lagAlertThresholdSeconds int = 300

@description('Auth alert: fires when an identity has at least this many failed token requests in 15 minutes.')
@minValue(1)
param authFailureAlertThreshold int = 5

@description('More app settings (e.g. settings your REPLICATOR streams options reference). Secrets only as Key Vault references.')
@secure()
param extraAppSettings object = {}

@description('Tags on every resource.')
param tags object = {}

// ---------------------------------------------------------------------------------------------------- names

// Whether a name holds only lowercase letters, digits and single hyphens, and starts and ends with a letter or digit:
// what a storage queue and a blob container accept, and what the other derived names stay valid with. Bicep has
// neither @pattern nor regular expressions, so the characters are checked one by one; a parameter that breaks the
// rule stops the deployment with fail() before any resource is created (functions: Bicep CLI 0.26 or newer).
// https://learn.microsoft.com/rest/api/storageservices/naming-queues-and-metadata
// https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata
// https://learn.microsoft.com/azure/azure-resource-manager/bicep/bicep-functions-flow-control
func isLowercaseLabel(name string) bool => (!empty(name)) && empty(filter(map(range(0, length(name)), i => substring(name, i, 1)), c => !contains('abcdefghijklmnopqrstuvwxyz0123456789-', c))) && (!startsWith(name, '-')) && (!endsWith(name, '-')) && (!contains(name, '--'))

// Azure resource names are case-insensitive, so baseName may hold capitals; the derivations below are the same as
// before this check, so an existing deployment keeps its resources.
var checkedBaseName = isLowercaseLabel(toLower(baseName)) ? baseName : fail('baseName \'${baseName}\' cannot name the resources: use 3-12 letters, digits and single hyphens, starting and ending with a letter or digit (infra/README.md, Parameters).')
var checkedQueueName = isLowercaseLabel(queueName) ? queueName : fail('queueName \'${queueName}\' is not a storage queue name: use 3-56 lowercase letters, digits and single hyphens, starting and ending with a letter or digit (infra/README.md, Parameters).')
// Checked only on the branch that uses it: ARM may evaluate a variable that nothing uses, and the default is empty.
var customAppName = toLower(functionAppName)
var customAppNameIsValid = (length(customAppName) >= 2) && isLowercaseLabel(customAppName)

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, location, checkedBaseName))
var appName = empty(functionAppName) ? toLower('func-${checkedBaseName}-${resourceToken}') : (customAppNameIsValid ? customAppName : fail('functionAppName \'${functionAppName}\' is not a Function App name: use 2-60 letters, digits and single hyphens, starting and ending with a letter or digit, or leave it empty (infra/README.md, Parameters).'))
var identityName = 'id-${checkedBaseName}-${resourceToken}'
var planName = 'plan-${checkedBaseName}-${resourceToken}'
var storageAccountName = take(toLower('st${replace(checkedBaseName, '-', '')}${resourceToken}'), 24)
var logAnalyticsName = 'log-${checkedBaseName}-${resourceToken}'
var applicationInsightsName = 'appi-${checkedBaseName}-${resourceToken}'
// The quickstart's container naming: app-package-<the app name, at most 32 characters>-<7 of the token>, at most 63
// characters. The app name holds no '--', but cut at 32 it can end in a hyphen, which would put two in a row.
var appNameStem = take(appName, 32)
var containerAppStem = endsWith(appNameStem, '-') ? take(appNameStem, 31) : appNameStem
var deploymentContainerName = 'app-package-${containerAppStem}-${take(resourceToken, 7)}'

// ---------------------------------------------------------------------------------------------------- REPLICATOR_CONFIG

// Inline JSON (config_loader accepts a value starting with '{'). The URIs stay in their own app settings and are
// referenced as ${NAME}, which the app expands at start-up: a Key Vault reference works for them, and the JSON
// itself never holds a secret. '\${' is Bicep's escape for a literal '${'.
var entraDefaults = {
  auth_method: 'entra'
  tenant_id: tenant().tenantId
  client_id: identity.outputs.clientId
  credential: 'managed_identity'
}
var connectionStringDefaults = {
  auth_method: 'connection_string'
}
var replicatorStreams = [for s in streams: union({
  name: s.name
  source: {
    connection_uri: '\${SOURCE_MONGODB_URI}'
    database: s.sourceDatabase
    collection: s.sourceCollection
  }
  estuary: {
    connection_uri: '\${ESTUARY_MONGODB_URI}'
    database: s.estuaryDatabase
    collection: s.estuaryCollection
  }
}, (s.?options) ?? {})]
var replicatorConfig = string({
  defaults: (mongoAuthMethod == 'entra') ? entraDefaults : connectionStringDefaults
  checkpoints: {
    connection_uri: '\${CHECKPOINTS_MONGODB_URI}'
    database: checkpointsDatabase
  }
  streams: replicatorStreams
})
var effectiveEstuaryUri = empty(estuaryMongoUri) ? sourceMongoUri : estuaryMongoUri
var effectiveCheckpointsUri = empty(checkpointsMongoUri) ? effectiveEstuaryUri : checkpointsMongoUri

// ---------------------------------------------------------------------------------------------------- cluster roles

// The least the replicator needs on a DocumentDB cluster (docs/entra-id.md, Registering the identity): read on each
// source database (find, change streams), readWrite on each estuary database (the data and replicator_fences) and
// on the checkpoint database (checkpoints, dead_letters). A database both read and written gets readWrite only.
// union() keeps one of each duplicate value (Bicep array functions). The role names and the per-database form are
// those of Microsoft's role-based access control page, which registers {db: 'sales', role: 'readWrite'} through
// mongoClusters/users@2025-09-01: https://learn.microsoft.com/azure/documentdb/how-to-connect-role-based-access-control
var writtenDatabases = union(map(streams, s => s.estuaryDatabase), [checkpointsDatabase])
var readDatabases = union(filter(map(streams, s => s.sourceDatabase), db => !contains(writtenDatabases, db)), [])
var readRoles = map(readDatabases, db => {
  db: db
  role: 'read'
})
var readWriteRoles = map(writtenDatabases, db => {
  db: db
  role: 'readWrite'
})
var documentDbUserRoles = empty(documentDbRoles) ? concat(readRoles, readWriteRoles) : documentDbRoles

// ---------------------------------------------------------------------------------------------------- modules

module identity 'app/identity.bicep' = {
  name: 'identity'
  params: {
    name: identityName
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  params: {
    name: storageAccountName
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    queueName: checkedQueueName
    identityPrincipalId: identity.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: logAnalyticsName
    applicationInsightsName: applicationInsightsName
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
    identityPrincipalId: identity.outputs.principalId
  }
}

module functionApp 'app/function-app.bicep' = {
  name: 'function-app'
  params: {
    name: appName
    location: location
    tags: tags
    planName: planName
    planSku: planSku
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    maximumElasticWorkerCount: maximumElasticWorkerCount
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    premiumPackageBlobName: premiumPackageBlobName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
    replicatorConfig: replicatorConfig
    schedule: schedule
    queueName: storage.outputs.queueName
    sourceMongoUri: sourceMongoUri
    estuaryMongoUri: effectiveEstuaryUri
    checkpointsMongoUri: effectiveCheckpointsUri
    extraAppSettings: extraAppSettings
  }
}

// After the app, not just after the identity: a principal created seconds earlier can be unknown to the cluster yet
// ("principal not found"), and the app takes a while. A failure here leaves the rest deployed; infra/README.md
// (step 4) says what each failure means and how to run this step alone.
module documentDbUser 'app/documentdb-user.bicep' = if (!empty(documentDbClusterName)) {
  name: 'documentdb-user'
  scope: resourceGroup(empty(documentDbResourceGroupName) ? resourceGroup().name : documentDbResourceGroupName)
  dependsOn: [
    functionApp
  ]
  params: {
    clusterName: documentDbClusterName
    principalId: identity.outputs.principalId
    roles: documentDbUserRoles
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  params: {
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    location: location
    tags: tags
    displayName: 'Mongo change-stream replicator (${appName})'
  }
}

module alerts 'app/alerts.bicep' = if (enableAlerts) {
  name: 'alerts'
  params: {
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    location: location
    tags: tags
    namePrefix: appName
    actionGroupId: alertActionGroupId
    lagThresholdSeconds: lagAlertThresholdSeconds
    authFailureThreshold: authFailureAlertThreshold
  }
}

// ---------------------------------------------------------------------------------------------------- outputs
// Names and ids only: nothing here is a credential.

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output identityClientId string = identity.outputs.clientId
output identityPrincipalId string = identity.outputs.principalId
output storageAccountName string = storage.outputs.name
output deploymentContainerName string = storage.outputs.deploymentContainerName
output applicationInsightsName string = monitoring.outputs.applicationInsightsName
