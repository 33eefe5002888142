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
  value: {{ include "argus.kafkaProtocol" .root | quote }}
- name: ARGUS_{{ .service }}_KAFKA__CLIENT_ID
  value: {{ .principal | quote }}
- name: ARGUS_{{ .service }}_KAFKA__REPLICATION
  value: {{ .root.Values.kafka.replication | quote }}
{{- if hasPrefix "SASL" .root.Values.kafka.securityProtocol }}
- name: ARGUS_{{ .service }}_KAFKA__SASL_MECHANISM
  value: {{ .root.Values.kafka.saslMechanism | quote }}
- name: ARGUS_{{ .service }}_KAFKA__SASL_USERNAME
  value: {{ .principal | quote }}
- name: ARGUS_{{ .service }}_KAFKA__SASL_PASSWORD_FILE
  value: /etc/argus/kafka/password
{{- end }}
{{- if hasSuffix "SSL" .root.Values.kafka.securityProtocol }}
- name: ARGUS_{{ .service }}_KAFKA__SSL_CAFILE
  value: /etc/argus/kafka-ca/ca.crt
{{- end }}
{{- end -}}

{{- define "argus.kafkaProtocol" -}}
{{- $p := .Values.kafka.securityProtocol -}}
{{- if and (ne $p "SASL_SSL") (not .Values.kafka.allowInsecure) -}}
{{- fail (printf "kafka.securityProtocol %s: SASL_SSL is required (set kafka.allowInsecure to accept it)" $p) -}}
{{- end -}}
{{- if and (hasSuffix "SSL" $p) (not .Values.kafka.caSecret.name) -}}
{{- fail "kafka.caSecret.name: the Secret holding the Kafka cluster CA certificate is required" -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{/* Mounts and volumes of a pod's Kafka credentials: its principal's password and the CA. */}}
{{- define "argus.kafkaMounts" -}}
{{- if hasPrefix "SASL" .root.Values.kafka.securityProtocol }}
- {name: kafka-password, mountPath: /etc/argus/kafka, readOnly: true}
{{- end }}
{{- if hasSuffix "SSL" .root.Values.kafka.securityProtocol }}
- {name: kafka-ca, mountPath: /etc/argus/kafka-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "argus.kafkaVolumes" -}}
{{- if hasPrefix "SASL" .root.Values.kafka.securityProtocol }}
- name: kafka-password
  secret:
    secretName: {{ default .principal (index .root.Values.kafka.passwordSecrets .principal) }}
    defaultMode: 0400
    items: [{key: password, path: password}]
{{- end }}
{{- if hasSuffix "SSL" .root.Values.kafka.securityProtocol }}
- name: kafka-ca
  secret:
    secretName: {{ .root.Values.kafka.caSecret.name }}
    items: [{key: {{ .root.Values.kafka.caSecret.key }}, path: ca.crt}]
{{- end }}
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
{{- with .root.Values.clickhouse.cluster }}
- name: ARGUS_{{ $.service }}_CLICKHOUSE__CLUSTER
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "argus.clickhouseSecret" -}}
{{- $u := index .root.Values.clickhouse.users .user -}}
{{- default (printf "%s-clickhouse-%s" (include "argus.fullname" .root) .user) $u.existingSecret -}}
{{- end -}}

{{/* How ClickHouse and `argus privacy` reach the key service: keys.url, else this release's Service (https with keys.tls.secretName). */}}
{{- define "argus.keysUrl" -}}
{{- $scheme := ternary "https" "http" (not (empty .Values.keys.tls.secretName)) -}}
{{- .Values.keys.url | default (printf "%s://%s-keys:8129" $scheme (include "argus.fullname" .)) -}}
{{- end }}
