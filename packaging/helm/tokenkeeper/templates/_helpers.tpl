{{- define "tokenkeeper.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokenkeeper.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tokenkeeper.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokenkeeper.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "tokenkeeper.serviceAccount" -}}
{{ .Values.serviceAccount.name | default (include "tokenkeeper.fullname" .) }}
{{- end -}}

{{- define "tokenkeeper.credentialsSecret" -}}
{{ .Values.credentials.existingSecret | default (printf "%s-credentials" (include "tokenkeeper.fullname" .)) }}
{{- end -}}

{{/* The tokenkeeper container: for the Deployment (secretWriter) or as a
native sidecar (an init container with restartPolicy: Always). */}}
{{- define "tokenkeeper.container" -}}
- name: tokenkeeper
  image: {{ include "tokenkeeper.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["run", "--config", "/etc/tokenkeeper/config/config.toml"]
  {{- if eq .Values.mode "sidecar" }}
  restartPolicy: Always
  {{- end }}
  {{- if .Values.cluster.enabled }}
  env:
    # the member's name in the cluster
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
  {{- end }}
  ports:
    - {name: metrics, containerPort: {{ .Values.metrics.port }}}
  startupProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: 1
    failureThreshold: 120
  livenessProbe:
    httpGet: {path: /healthz, port: metrics}
    periodSeconds: 20
  readinessProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: 10
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: config, mountPath: /etc/tokenkeeper/config, readOnly: true}
    - {name: credentials, mountPath: /etc/tokenkeeper/credentials, readOnly: true}
    - {name: state, mountPath: /var/lib/tokenkeeper}
    {{- if eq .Values.mode "sidecar" }}
    - {name: tokens, mountPath: {{ .Values.sidecar.tokensMountPath }}}
    {{- end }}
    {{- if .Values.cluster.enabled }}
    - {name: cluster-key, mountPath: /etc/tokenkeeper/cluster, readOnly: true}
    {{- if .Values.cluster.tlsSecret }}
    - {name: etcd-tls, mountPath: /etc/tokenkeeper/etcd, readOnly: true}
    {{- end }}
    {{- end }}
{{- end -}}

{{- define "tokenkeeper.volumes" -}}
- name: config
  configMap: {name: {{ include "tokenkeeper.fullname" . }}-config}
- name: credentials
  secret: {secretName: {{ include "tokenkeeper.credentialsSecret" . }}, defaultMode: 0440}
- name: state
  emptyDir: {medium: Memory, sizeLimit: 8Mi}
{{- if eq .Values.mode "sidecar" }}
- name: tokens
  emptyDir: {medium: Memory, sizeLimit: 1Mi}
{{- end }}
{{- if .Values.cluster.enabled }}
- name: cluster-key
  secret: {secretName: {{ .Values.cluster.keySecret }}, defaultMode: 0440}
{{- if .Values.cluster.tlsSecret }}
- name: etcd-tls
  secret: {secretName: {{ .Values.cluster.tlsSecret }}, defaultMode: 0440}
{{- end }}
{{- end }}
{{- end -}}

{{- define "tokenkeeper.podExtras" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
