{{- define "argus.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "argus.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}


{{/* Environment shared by every service: prefix is ARGUS_<SERVICE>_ */}}
{{- define "argus.env" -}}
- name: ARGUS_{{ .service }}_KAFKA__BOOTSTRAP_SERVERS
  value: {{ .root.Values.kafka.bootstrapServers | quote }}
- name: ARGUS_{{ .service }}_KAFKA__TOPIC_PREFIX
  value: {{ .root.Values.kafka.topicPrefix | quote }}
- name: ARGUS_{{ .service }}_KAFKA__SECURITY_PROTOCOL
  value: {{ .root.Values.kafka.securityProtocol | quote }}
{{- end -}}

{{/* The DSN of one ClickHouse user (admin | ingest | retraining), from its own Secret. */}}
{{- define "argus.clickhouseEnv" -}}
{{- $u := index .root.Values.clickhouse.users .user -}}
{{- if not (or $u.existingSecret $u.dsn) -}}
{{- fail (printf "clickhouse.users.%s: set existingSecret (a Secret with key dsn) or dsn; there is no default" .user) -}}
{{- end }}
- name: ARGUS_{{ .service }}_CLICKHOUSE__DSN
  valueFrom:
    secretKeyRef:
      name: {{ include "argus.clickhouseSecret" . }}
      key: dsn
{{- end -}}

{{- define "argus.clickhouseSecret" -}}
{{- $u := index .root.Values.clickhouse.users .user -}}
{{- default (printf "%s-clickhouse-%s" (include "argus.fullname" .root) .user) $u.existingSecret -}}
{{- end -}}
