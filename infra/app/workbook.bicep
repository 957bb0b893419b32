// A shared Azure Monitor workbook on the Application Insights component: the replicator's dashboard.
// The queries are the .kql files in infra/queries (loaded at compile time), so the workbook and what people paste
// into Logs never drift apart.
// https://learn.microsoft.com/azure/templates/microsoft.insights/2023-06-01/workbooks
// Workbook JSON (Notebook/1.0, KqlItem/1.0, KqlParameterItem/1.0):
// https://learn.microsoft.com/azure/azure-monitor/visualize/workbooks-automate

@description('Application Insights component the workbook queries and is listed under.')
param applicationInsightsName string

@description('Region.')
param location string

@description('Tags.')
param tags object = {}

@description('Title shown in the portal.')
param displayName string

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var charts = [
  {
    name: 'replication-lag'
    title: 'Replication lag per stream (s)'
    query: loadTextContent('../queries/replication-lag.kql')
    visualization: 'timechart'
  }
  {
    name: 'collections-behind'
    title: 'Scoped streams: the collections furthest behind (s)'
    query: loadTextContent('../queries/collections-behind.kql')
    visualization: 'table'
  }
  {
    name: 'events-per-second'
    title: 'Events applied per second'
    query: loadTextContent('../queries/events-per-second.kql')
    visualization: 'timechart'
  }
  {
    name: 'pass-outcomes'
    title: 'Pass outcomes per stream'
    query: loadTextContent('../queries/pass-outcomes.kql')
    visualization: 'table'
  }
  {
    name: 'dead-letters'
    title: 'Dead-lettered events'
    query: loadTextContent('../queries/dead-letters.kql')
    visualization: 'barchart'
  }
  {
    name: 'auth-failures'
    title: 'Entra auth failures per identity'
    query: loadTextContent('../queries/auth-failures.kql')
    visualization: 'barchart'
  }
  {
    name: 'token-cache-hit-ratio'
    title: 'Token cache hit ratio'
    query: loadTextContent('../queries/token-cache-hit-ratio.kql')
    visualization: 'timechart'
  }
  {
    name: 'notable-events'
    title: 'History lost, gaps, aging tokens, failed passes'
    query: loadTextContent('../queries/notable-events.kql')
    visualization: 'table'
  }
]

var header = {
  type: 1
  name: 'header'
  content: {
    json: '## Change-stream replicator\nPer-stream lag and throughput, pass outcomes, dead letters, Entra auth health and the log events that need a person. `python -m shared status` shows each checkpoint.'
  }
}

var timeRangeParameter = {
  type: 9
  name: 'parameters'
  content: {
    version: 'KqlParameterItem/1.0'
    parameters: [
      {
        id: '5f6e1b1c-2b7e-4c55-9d6a-0c1f4f1b7a01'
        version: 'KqlParameterItem/1.0'
        name: 'TimeRange'
        label: 'Time range'
        type: 4
        isRequired: true
        value: {
          durationMs: 86400000
        }
        typeSettings: {
          selectableValues: [
            {
              durationMs: 3600000
            }
            {
              durationMs: 14400000
            }
            {
              durationMs: 86400000
            }
            {
              durationMs: 604800000
            }
          ]
        }
      }
    ]
    style: 'pills'
    queryType: 0
    resourceType: 'microsoft.insights/components'
  }
}

var chartItems = [for c in charts: {
  type: 3
  name: c.name
  customWidth: '50'
  content: {
    version: 'KqlItem/1.0'
    title: c.title
    query: c.query
    size: 0
    queryType: 0
    resourceType: 'microsoft.insights/components'
    timeContextFromParameter: 'TimeRange'
    visualization: c.visualization
  }
}]

var workbookContent = {
  version: 'Notebook/1.0'
  items: concat([
    header
    timeRangeParameter
  ], chartItems)
  fallbackResourceIds: [
    toLower(applicationInsights.id)
  ]
  '$schema': 'https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json'
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID.
  name: guid(resourceGroup().id, applicationInsightsName, 'replicator-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    // The component's id, lower-cased as the portal writes it when it exports a workbook: the workbook is then listed
    // under the component (Application Insights > Workbooks). Samples:
    // https://learn.microsoft.com/azure/azure-monitor/visualize/resource-manager-workbooks
    sourceId: toLower(applicationInsights.id)
    serializedData: string(workbookContent)
  }
}

output workbookId string = workbook.id
