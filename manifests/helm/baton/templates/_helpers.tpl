{{- define "baton.labels" -}}
app.kubernetes.io/name: baton
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "baton.selector" -}}
app.kubernetes.io/name: baton
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- /* Cluster-scoped objects carry the namespace too: two releases of the same name in two
namespaces must not share (and fight over) them. */}}
{{- define "baton.clusterName" -}}
{{ .Release.Namespace }}-{{ .Release.Name }}
{{- end }}
{{- /* The port of config.metricsAddress (host:port, or [v6]:port). */}}
{{- define "baton.metricsPort" -}}
{{ splitList ":" .Values.config.metricsAddress | last }}
{{- end }}
