// Log Analytics + workspace-based Application Insights, both refusing local (key-based) authentication: the
// component takes only Entra-authenticated telemetry, and the workspace refuses its shared keys (agents and the
// Data Collector API), so neither holds a key anyone could ingest with.
// The app sends with APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD;ClientId=<identity client id>,
// which needs Monitoring Metrics Publisher on the component:
// https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication
// https://learn.microsoft.com/azure/templates/microsoft.insights/2020-02-02/components
// https://learn.microsoft.com/azure/templates/microsoft.operationalinsights/2023-09-01/workspaces

@description('Log Analytics workspace name.')
param logAnalyticsName string

@description('Application Insights component name.')
param applicationInsightsName string

@description('Region.')
param location string

@description('Tags.')
param tags object = {}

@description('Days the workspace keeps data.')
param retentionInDays int = 30

@description('Principal (object) id of the Function App identity.')
param identityPrincipalId string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      // Only Microsoft Entra ID may ingest: WorkspaceFeatures.disableLocalAuth ("Disable Non-AAD based Auth").
      // https://learn.microsoft.com/rest/api/loganalytics/workspaces/create-or-update#workspacefeatures
      disableLocalAuth: true
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    // Local (instrumentation key) ingestion off: only Entra-authenticated clients can send.
    DisableLocalAuth: true
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, identityPrincipalId, monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output applicationInsightsName string = applicationInsights.name
output applicationInsightsId string = applicationInsights.id
output logAnalyticsId string = workspace.id
