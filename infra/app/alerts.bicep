// Two log search alerts over the replicator's metrics in Application Insights (customMetrics), split per stream
// and per identity. Log search rather than metric alerts: the per-stream dimension of OpenTelemetry custom metrics
// reaches Azure Monitor Metrics only when "custom metric dimensions" alerting is switched on in the portal, while
// the log tables always carry it.
// https://learn.microsoft.com/azure/templates/microsoft.insights/2021-08-01/scheduledqueryrules
// https://learn.microsoft.com/azure/azure-monitor/alerts/alerts-create-log-alert-rule

@description('Application Insights component the rules query.')
param applicationInsightsName string

@description('Region.')
param location string

@description('Tags.')
param tags object = {}

@description('Prefix of the rule names.')
param namePrefix string

@description('Action group to notify; empty fires the alerts without notification (they show in the portal).')
param actionGroupId string = ''

@description('Lag above which a stream alerts (seconds).')
param lagThresholdSeconds int = 300

@description('Failed token requests per identity in the window that alert.')
param authFailureThreshold int = 5

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var actions = {
  actionGroups: empty(actionGroupId) ? [] : [
    actionGroupId
  ]
}

resource lagAlert 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: '${namePrefix}-replication-lag'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}: replication lag'
    description: 'A stream lags more than ${lagThresholdSeconds} s behind its source (replicator_replication_lag_seconds).'
    severity: 2
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/alert-replication-lag.kql')
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'lag_max_s'
          dimensions: [
            {
              name: 'stream'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: lagThresholdSeconds
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: actions
  }
}

resource authAlert 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: '${namePrefix}-auth-failures'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}: Entra auth failures'
    description: 'An identity failed at least ${authFailureThreshold} token requests in 15 minutes (replicator_mongo_auth_failures_total).'
    severity: 1
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/alert-auth-failures.kql')
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          dimensions: [
            {
              name: 'identity'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThanOrEqual'
          threshold: authFailureThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: actions
  }
}

output ruleIds array = [
  lagAlert.id
  authAlert.id
]
