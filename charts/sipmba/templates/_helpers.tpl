{{/* Common labels. */}}
{{- define "sipmba.labels" -}}
app.kubernetes.io/name: sipmba
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The operator's name. */}}
{{- define "sipmba.operator" -}}
{{ .Release.Name }}-operator
{{- end }}
