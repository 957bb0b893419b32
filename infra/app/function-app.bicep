// The Function App: Linux, Python 3.11, user-assigned identity, identity-based host storage, Entra telemetry.
//
// Flex Consumption (planSku FC1, the default): runtime, scale and the deployment container live in
// functionAppConfig; the platform rejects or ignores the app settings of flexRejectedSettings below, linuxFxVersion
// and alwaysOn, so none of them is set, and extraAppSettings may not set them either.
//   https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan
//   https://learn.microsoft.com/azure/azure-functions/functions-infrastructure-as-code?pivots=flex-consumption-plan
//   https://learn.microsoft.com/azure/templates/microsoft.web/2024-04-01/sites (functionAppConfig)
//
// Elastic Premium (EP1-EP3): linuxFxVersion, FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION as the
// Premium pivot of functions-infrastructure-as-code shows. Premium normally keeps the code on an Azure Files share
// (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING + WEBSITE_CONTENTSHARE), but Azure Files accepts only a connection
// string with the account key, and this storage account has shared keys off. So the app follows "Create an app
// without Azure Files": it runs from a package blob fetched with the managed identity
// (WEBSITE_RUN_FROM_PACKAGE=<blob URL> + WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID).
//   https://learn.microsoft.com/azure/azure-functions/storage-considerations#create-an-app-without-azure-files
//   https://learn.microsoft.com/azure/azure-functions/deployment-zip-push#fetch-a-package-from-azure-blob-storage-by-using-a-managed-identity

@description('Function App name.')
param name string

@description('Region.')
param location string

@description('Tags.')
param tags object = {}

@description('Hosting plan name.')
param planName string

@description('FC1 (Flex Consumption) or EP1/EP2/EP3 (Elastic Premium).')
@allowed([
  'FC1'
  'EP1'
  'EP2'
  'EP3'
])
param planSku string = 'FC1'

@description('Flex Consumption: most instances.')
param maximumInstanceCount int = 20

@description('Flex Consumption: memory per instance (MB).')
param instanceMemoryMB int = 2048

@description('Elastic Premium: most workers.')
param maximumElasticWorkerCount int = 5

@description('Name of the user-assigned identity the app runs as.')
param identityName string

@description('Host storage account name.')
param storageAccountName string

@description('Blob container of the deployment package.')
param deploymentContainerName string

@description('Elastic Premium: package blob name in the deployment container.')
param premiumPackageBlobName string = 'replicator.zip'

@description('Application Insights component name.')
param applicationInsightsName string

@description('REPLICATOR_CONFIG: inline JSON; it references the URIs below as \${NAME} and holds no secret.')
param replicatorConfig string

@description('REPLICATOR_SCHEDULE.')
param schedule string

@description('REPLICATOR_QUEUE.')
param queueName string

@description('SOURCE_MONGODB_URI (no secret with Entra; otherwise a Key Vault reference).')
@secure()
param sourceMongoUri string

@description('ESTUARY_MONGODB_URI.')
@secure()
param estuaryMongoUri string

@description('CHECKPOINTS_MONGODB_URI.')
@secure()
param checkpointsMongoUri string

@description('More app settings; the template\'s own settings win on a name clash. On Flex Consumption, none of flexRejectedSettings.')
@secure()
param extraAppSettings object = {}

@description('Log Analytics workspace that receives the app\'s platform logs and metrics (diagnostic settings).')
param logAnalyticsWorkspaceId string

var isFlex = (planSku == 'FC1')
var pythonVersion = '3.11'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// https://learn.microsoft.com/azure/templates/microsoft.web/2024-04-01/serverfarms
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: isFlex ? 'functionapp' : 'elastic'
  sku: isFlex ? {
    name: 'FC1'
    tier: 'FlexConsumption'
  } : {
    name: planSku
    tier: 'ElasticPremium'
    family: 'EP'
  }
  properties: isFlex ? {
    reserved: true
  } : {
    reserved: true
    maximumElasticWorkerCount: maximumElasticWorkerCount
  }
}

var flexAppConfig = {
  deployment: {
    storage: {
      type: 'blobContainer'
      value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
      authentication: {
        type: 'UserAssignedIdentity'
        userAssignedIdentityResourceId: identity.id
      }
    }
  }
  scaleAndConcurrency: {
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  runtime: {
    name: 'python'
    version: pythonVersion
  }
}

var flexSiteConfig = {
  minTlsVersion: '1.2'
}

var premiumSiteConfig = {
  linuxFxVersion: 'Python|${pythonVersion}'
  minTlsVersion: '1.2'
  ftpsState: 'Disabled'
}

// https://learn.microsoft.com/azure/templates/microsoft.web/2024-04-01/sites
resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    reserved: true
    httpsOnly: true
    // Key Vault references in app settings (a password-bearing Mongo URI) resolve with this identity:
    // https://learn.microsoft.com/azure/app-service/app-service-key-vault-references#access-vaults-with-a-user-assigned-identity
    keyVaultReferenceIdentity: identity.id
    functionAppConfig: isFlex ? flexAppConfig : null
    siteConfig: isFlex ? flexSiteConfig : premiumSiteConfig
  }
}

// Identity-based AzureWebJobsStorage: the host and both queue bindings (connection "AzureWebJobsStorage") use it.
// https://learn.microsoft.com/azure/azure-functions/functions-reference#common-properties-for-identity-based-connections
var storageSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
}

// azure-monitor-opentelemetry reads both and authenticates with the managed identity (shared/telemetry.py).
// https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication
var telemetrySettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identity.properties.clientId}'
}

// What function_app.py and shared/ read: %REPLICATOR_SCHEDULE% and %REPLICATOR_QUEUE% in the bindings,
// REPLICATOR_CONFIG, and the ${NAME} settings REPLICATOR_CONFIG references. AZURE_CLIENT_ID / AZURE_TENANT_ID are
// what the example configurations reference (examples/configs/azure/entra-user-assigned.yaml).
var replicatorSettings = {
  REPLICATOR_CONFIG: replicatorConfig
  REPLICATOR_SCHEDULE: schedule
  REPLICATOR_QUEUE: queueName
  SOURCE_MONGODB_URI: sourceMongoUri
  ESTUARY_MONGODB_URI: estuaryMongoUri
  CHECKPOINTS_MONGODB_URI: checkpointsMongoUri
  AZURE_CLIENT_ID: identity.properties.clientId
  AZURE_TENANT_ID: tenant().tenantId
}

var premiumSettings = {
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'python'
  WEBSITE_RUN_FROM_PACKAGE: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}/${premiumPackageBlobName}'
  WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID: identity.id
}

// Settings a Flex Consumption app rejects or ignores: the "Flex Consumption plan deprecations" that Microsoft's
// migration guide filters out of an app's settings (the others it filters, AzureWebJobsStorage* and
// APPLICATIONINSIGHTS_CONNECTION_STRING, are set above and win over extraAppSettings anyway).
// https://learn.microsoft.com/azure/azure-functions/functions-app-settings#flex-consumption-plan-deprecations
// https://learn.microsoft.com/azure/azure-functions/migration/migrate-plan-consumption-to-flex
var flexRejectedSettings = [
  'ENABLE_ORYX_BUILD'
  'FUNCTIONS_EXTENSION_VERSION'
  'FUNCTIONS_MAX_HTTP_CONCURRENCY'
  'FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED'
  'FUNCTIONS_WORKER_PROCESS_COUNT'
  'FUNCTIONS_WORKER_RUNTIME'
  'FUNCTIONS_WORKER_RUNTIME_VERSION'
  'SCM_DO_BUILD_DURING_DEPLOYMENT'
  'WEBSITE_CONTENTAZUREFILECONNECTIONSTRING'
  'WEBSITE_CONTENTOVERVNET'
  'WEBSITE_CONTENTSHARE'
  'WEBSITE_DNS_SERVER'
  'WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT'
  'WEBSITE_NODE_DEFAULT_VERSION'
  'WEBSITE_RUN_FROM_PACKAGE'
  'WEBSITE_SKIP_CONTENTSHARE_VALIDATION'
  'WEBSITE_VNET_ROUTE_ALL'
]
// Names only in the message: the values may be Key Vault references or worse.
var refusedExtraSettings = isFlex ? filter(objectKeys(extraAppSettings), key => contains(flexRejectedSettings, toUpper(key))) : []
var checkedExtraAppSettings = empty(refusedExtraSettings) ? extraAppSettings : fail('extraAppSettings sets ${join(refusedExtraSettings, ', ')}, which Flex Consumption rejects or ignores: remove them (runtime, scale and deployment are in functionAppConfig), or deploy with planSku EP1-EP3.')

var appSettings = union(checkedExtraAppSettings, storageSettings, telemetrySettings, replicatorSettings, isFlex ? {} : premiumSettings)

resource siteSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: appSettings
}

// Publishing with a user name and password (FTP, and Kudu / Web Deploy / local Git on the scm site) off: deployments
// authenticate with Microsoft Entra ID, as config-zip and the Flex deployment container already do.
// https://learn.microsoft.com/azure/app-service/configure-basic-auth-disable
// https://learn.microsoft.com/azure/templates/microsoft.web/2024-04-01/sites/basicpublishingcredentialspolicies
resource basicPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = [for policy in [
  'ftp'
  'scm'
]: {
  parent: site
  name: policy
  properties: {
    allow: false
  }
}]

// The platform's own logs (FunctionAppLogs: host and function execution) and metrics, next to the telemetry the app
// sends to Application Insights.
// https://learn.microsoft.com/azure/templates/microsoft.insights/2021-05-01-preview/diagnosticsettings
// https://learn.microsoft.com/azure/azure-functions/monitor-functions-reference
resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: site
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
