{{/*
Names, labels and the small pieces every component shares. Helpers that need more than the root
context take a dict: {"ctx": $, "component": "orchestrator", ...}.
*/}}

{{- define "glmvoice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "glmvoice.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Resource name of a component: <fullname>-<component>. */}}
{{- define "glmvoice.componentName" -}}
{{- printf "%s-%s" (include "glmvoice.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Triton model names use underscores (as in the model repository); Kubernetes names cannot. */}}
{{- define "glmvoice.tritonName" -}}
{{- include "glmvoice.componentName" (dict "ctx" .ctx "component" (printf "triton-%s" (.model | replace "_" "-"))) }}
{{- end }}

{{/* Selector labels: immutable once a Deployment exists, so only identity goes here. */}}
{{- define "glmvoice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "glmvoice.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .model }}
glmvoice.io/model: {{ . }}
{{- end }}
{{- end }}

{{/* The same selector as a label-selector string (k=v,k=v) for API clients. */}}
{{- define "glmvoice.selectorString" -}}
{{- $pairs := list }}
{{- range $k, $v := include "glmvoice.selectorLabels" . | fromYaml }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "glmvoice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "glmvoice.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: glmvoice
{{- end }}

{{/* Image reference; .image overrides the global image field by field. */}}
{{- define "glmvoice.image" -}}
{{- $global := .ctx.Values.image }}
{{- $own := .image | default dict }}
{{- $repository := $own.repository | default $global.repository }}
{{- $tag := $own.tag | default $global.tag | default .ctx.Chart.AppVersion }}
{{- $digest := $own.digest | default $global.digest }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{- define "glmvoice.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Service account of the workloads that never call the Kubernetes API. */}}
{{- define "glmvoice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "glmvoice.componentName" (dict "ctx" . "component" "workload")) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "glmvoice.promoterServiceAccountName" -}}
{{- if .Values.promoter.serviceAccount.create }}
{{- default (include "glmvoice.componentName" (dict "ctx" . "component" "promoter")) .Values.promoter.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.promoter.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "glmvoice.jobSubmitterServiceAccountName" -}}
{{- if .Values.jobSubmitter.serviceAccount.create }}
{{- default (include "glmvoice.componentName" (dict "ctx" . "component" "job-submitter")) .Values.jobSubmitter.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.jobSubmitter.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* host:port of Redis: the bundled StatefulSet's Service or the external address. */}}
{{- define "glmvoice.redisAddr" -}}
{{- if .Values.redis.enabled }}
{{- printf "%s:%d" (include "glmvoice.componentName" (dict "ctx" . "component" "redis")) (int .Values.redis.port) }}
{{- else }}
{{- required "redis.external.addr (host:port) is required when redis.enabled is false" .Values.redis.external.addr }}
{{- end }}
{{- end }}

{{/* host:port of one Triton model's gRPC endpoint. */}}
{{- define "glmvoice.tritonAddr" -}}
{{- printf "%s:%d" (include "glmvoice.tritonName" .) (int .ctx.Values.triton.ports.grpc) }}
{{- end }}

{{- define "glmvoice.apiKeysSecretName" -}}
{{- default (include "glmvoice.componentName" (dict "ctx" . "component" "api-keys")) .Values.auth.existingSecret }}
{{- end }}

{{- define "glmvoice.modelRepositoryClaim" -}}
{{- default (include "glmvoice.componentName" (dict "ctx" . "component" "model-repository")) .Values.storage.modelRepository.existingClaim }}
{{- end }}

{{- define "glmvoice.storeClaim" -}}
{{- default (include "glmvoice.componentName" (dict "ctx" . "component" "store")) .Values.storage.store.existingClaim }}
{{- end }}

{{/* Where the API-keys Secret is mounted; GLMVOICE_API_KEYS_FILE points at its one file. */}}
{{- define "glmvoice.apiKeysDir" -}}/etc/glmvoice/api-keys{{- end }}

{{- define "glmvoice.apiKeysEnv" -}}
{{- if .Values.auth.enabled -}}
- name: GLMVOICE_API_KEYS_FILE
  value: {{ printf "%s/%s" (include "glmvoice.apiKeysDir" .) .Values.auth.existingSecretKey | quote }}
{{- end }}
{{- end }}

{{- define "glmvoice.apiKeysVolume" -}}
{{- if .Values.auth.enabled -}}
- name: api-keys
  secret:
    secretName: {{ include "glmvoice.apiKeysSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "glmvoice.apiKeysMount" -}}
{{- if .Values.auth.enabled -}}
- name: api-keys
  mountPath: {{ include "glmvoice.apiKeysDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Pod scheduling: the nodeSelector / tolerations / affinity / topologySpreadConstraints that are set in
.spec (a component's values). Takes {"ctx", "spec"}.
*/}}
{{- define "glmvoice.podScheduling" -}}
{{- $out := dict }}
{{- range $key := list "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" }}
{{- with index $.spec $key }}{{ $_ := set $out $key . }}{{ end }}
{{- end }}
{{- with $out }}{{ toYaml . }}{{ end }}
{{- end }}

{{/* GPU count becomes an extended resource in both requests and limits (they must be equal). */}}
{{- define "glmvoice.resources" -}}
{{- $res := deepCopy (.resources | default dict) }}
{{- if gt (int (.gpu | default 0)) 0 }}
{{- $name := .ctx.Values.gpuResourceName }}
{{- $_ := set $res "limits" (merge (dict $name (int .gpu)) ($res.limits | default dict)) }}
{{- $_ := set $res "requests" (merge (dict $name (int .gpu)) ($res.requests | default dict)) }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
Environment every Python process gets: logging and tracing from the common ConfigMap, a service name
for spans, and no bytecode writes or dot-files on the read-only root filesystem.
*/}}
{{- define "glmvoice.baseEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "glmvoice-%s" .component | quote }}
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: HOME
  value: /tmp
{{- end }}

{{- define "glmvoice.commonEnvFrom" -}}
- configMapRef:
    name: {{ include "glmvoice.componentName" (dict "ctx" . "component" "common") }}
{{- end }}

{{/*
checksum/config annotation value: the rendered ConfigMaps / Secrets a pod reads, so that changing
any of them rolls the pods. Takes {"ctx", "files": [paths under templates/]}.
*/}}
{{- define "glmvoice.configChecksum" -}}
{{- $rendered := "" }}
{{- range .files }}
{{- $rendered = print $rendered (include (print $.ctx.Template.BasePath "/" .) $.ctx) }}
{{- end }}
{{- $rendered | sha256sum }}
{{- end }}

{{/* The writable scratch space a read-only root filesystem leaves the process. */}}
{{- define "glmvoice.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSize }}
{{- end }}

{{- define "glmvoice.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
HorizontalPodAutoscaler of a Deployment. Takes {"ctx", "component", "model" (optional), "name",
"autoscaling"}; metrics and behavior come from values as autoscaling/v2 structures.
*/}}
{{- define "glmvoice.hpa" -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ .name }}
  labels:
    {{- include "glmvoice.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .name }}
  minReplicas: {{ .autoscaling.minReplicas }}
  maxReplicas: {{ .autoscaling.maxReplicas }}
  metrics:
    {{- toYaml .autoscaling.metrics | nindent 4 }}
  {{- with .autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* PodDisruptionBudget over a component's pods. Takes {"ctx", "component", "model", "name", "pdb"}. */}}
{{- define "glmvoice.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  labels:
    {{- include "glmvoice.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "glmvoice.selectorLabels" . | nindent 6 }}
{{- end }}

{{/*
ServiceMonitor scraping a component's Services. Takes {"ctx", "component", "name", "port", "path"}.
*/}}
{{- define "glmvoice.serviceMonitor" -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ .name }}
  labels:
    {{- include "glmvoice.labels" . | nindent 4 }}
    {{- with .ctx.Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "glmvoice.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: {{ .port }}
      path: {{ .path }}
      interval: {{ .ctx.Values.serviceMonitor.interval }}
{{- end }}

{{/* Ingress to a component's Service. Takes {"ctx", "component", "name", "ingress", "port"}. */}}
{{- define "glmvoice.ingress" -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ .name }}
  labels:
    {{- include "glmvoice.labels" . | nindent 4 }}
  {{- with .ingress.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with .ingress.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with .ingress.tls }}
  tls:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    {{- range .ingress.hosts }}
    - host: {{ .host | quote }}
      http:
        paths:
          {{- range .paths }}
          - path: {{ .path }}
            pathType: {{ .pathType }}
            backend:
              service:
                name: {{ $.name }}
                port:
                  name: {{ $.port }}
          {{- end }}
    {{- end }}
{{- end }}
