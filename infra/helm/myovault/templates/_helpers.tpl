{{/* Names and labels. */}}
{{- define "myovault.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "myovault.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "myovault.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "myovault.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by web, worker and migrate: plain settings + references to the Secret. */}}
{{- define "myovault.env" -}}
{{- $secret := required "secret.name must name an existing Secret (see infra/README.md)" .Values.secret.name -}}
- name: MYOVAULT_EMBEDDED_WORKER
  value: "false"
- name: MYOVAULT_HOME
  value: /var/lib/myovault
- name: MYOVAULT_STORAGE
  value: {{ required "config.storage (s3://bucket/prefix) is required" .Values.config.storage | quote }}
{{- with .Values.config.s3EndpointUrl }}
- name: MYOVAULT_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.config.awsRegion | quote }}
- name: MYOVAULT_COOKIE_SECURE
  value: {{ .Values.config.cookieSecure | quote }}
{{- range $name, $value := .Values.config.extra }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
- name: MYOVAULT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.keys.databaseUrl }}
- name: MYOVAULT_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.keys.brokerUrl }}
- name: MYOVAULT_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.keys.masterKey }}
- name: MYOVAULT_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.keys.secretKey }}
{{- if .Values.secret.staticS3Credentials }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.keys.awsAccessKeyId }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.keys.awsSecretAccessKey }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every workload. */}}
{{- define "myovault.podSpecCommon" -}}
automountServiceAccountToken: false
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Writable scratch space: the root filesystem is read-only. */}}
{{- define "myovault.volumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end -}}

{{- define "myovault.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /var/lib/myovault
{{- end -}}
