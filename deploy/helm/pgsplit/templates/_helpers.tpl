{{- define "pgsplit.labels" -}}
app.kubernetes.io/name: pgsplit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "pgsplit.selector" -}}
app.kubernetes.io/name: pgsplit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
