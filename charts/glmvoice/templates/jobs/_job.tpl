{{/*
A one-off Job running one glmvoice command. Takes:
  ctx, component, name, job (train|evaluate|promote|rollback), command (list),
  spec (resources, gpu, nodeSelector, tolerations, affinity, activeDeadlineSeconds),
  serviceAccount, mounts (dict volume-name -> readOnly, of "store" and "models"; "tls": the gRPC TLS Secret
  when tls.enabled), env (list).
*/}}
{{- define "glmvoice.job" -}}
{{- $ctx := .ctx }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .name }}
  labels:
    {{- include "glmvoice.labels" . | nindent 4 }}
    glmvoice.io/job: {{ .job }}
spec:
  backoffLimit: {{ $ctx.Values.jobs.backoffLimit }}
  ttlSecondsAfterFinished: {{ $ctx.Values.jobs.ttlSecondsAfterFinished }}
  {{- with .spec.activeDeadlineSeconds }}
  activeDeadlineSeconds: {{ . }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "glmvoice.labels" . | nindent 8 }}
        glmvoice.io/job: {{ .job }}
      annotations:
        checksum/config: {{ include "glmvoice.configChecksum" (dict "ctx" $ctx "files" (list "common/configmap.yaml")) }}
    spec:
      restartPolicy: Never
      {{- with include "glmvoice.imagePullSecrets" $ctx }}{{ . | nindent 6 }}{{ end }}
      serviceAccountName: {{ .serviceAccount }}
      {{- /* Only the promoter talks to the Kubernetes API. */}}
      automountServiceAccountToken: {{ eq .component "promoter" }}
      securityContext:
        {{- toYaml $ctx.Values.podSecurityContext | nindent 8 }}
      {{- with include "glmvoice.podScheduling" (dict "ctx" $ctx "spec" .spec) }}{{ . | nindent 6 }}{{ end }}
      containers:
        - name: {{ .job }}
          image: {{ include "glmvoice.image" (dict "ctx" $ctx) }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          envFrom:
            {{- include "glmvoice.commonEnvFrom" $ctx | nindent 12 }}
          env:
            {{- include "glmvoice.baseEnv" . | nindent 12 }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          resources:
            {{- include "glmvoice.resources" (dict "ctx" $ctx "resources" .spec.resources "gpu" .spec.gpu) | nindent 12 }}
          securityContext:
            {{- toYaml $ctx.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "glmvoice.tmpMount" $ctx | nindent 12 }}
            {{- if hasKey .mounts "store" }}
            - name: store
              mountPath: /store
              readOnly: {{ .mounts.store }}
            {{- end }}
            {{- if hasKey .mounts "models" }}
            - name: models
              mountPath: /models
              readOnly: {{ .mounts.models }}
            {{- end }}
            {{- if hasKey .mounts "tls" }}
            {{- with include "glmvoice.tlsMount" $ctx }}{{ . | nindent 12 }}{{ end }}
            {{- end }}
      volumes:
        {{- include "glmvoice.tmpVolume" $ctx | nindent 8 }}
        {{- if hasKey .mounts "store" }}
        - name: store
          persistentVolumeClaim:
            claimName: {{ include "glmvoice.storeClaim" $ctx }}
        {{- end }}
        {{- if hasKey .mounts "models" }}
        - name: models
          persistentVolumeClaim:
            claimName: {{ include "glmvoice.modelRepositoryClaim" $ctx }}
        {{- end }}
        {{- if hasKey .mounts "tls" }}
        {{- with include "glmvoice.tlsVolume" $ctx }}{{ . | nindent 8 }}{{ end }}
        {{- end }}
{{- end }}

{{/* A Kubernetes name segment from a model name or an id. */}}
{{- define "glmvoice.jobSegment" -}}
{{- . | toString | lower | replace "_" "-" | replace "." "-" -}}
{{- end }}

{{/* The training Job's checkpoint directory: /store/<model>/<runId>. */}}
{{- define "glmvoice.checkpointDir" -}}
{{- printf "/store/%s/%s" .model .id }}
{{- end }}

{{/*
What the promoter needs besides its API access: Redis, where the repository and the store are, and
how to find the Triton pods of the model it swaps. Takes {"ctx", "model"}.
*/}}
{{- define "glmvoice.promoterEnv" -}}
- name: REDIS_ADDR
  value: {{ include "glmvoice.redisAddr" .ctx | quote }}
{{ include "glmvoice.redisPasswordEnv" .ctx }}
{{- with include "glmvoice.redisTlsEnv" .ctx }}
{{ . }}
{{- end }}
- name: GLMVOICE_MODEL_REPOSITORY
  value: /models/repository
- name: GLMVOICE_STORE
  value: /store
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: TRITON_LABEL_SELECTOR
  value: {{ include "glmvoice.selectorString" (dict "ctx" .ctx "component" "triton" "model" .model) | quote }}
- name: TRITON_GRPC_PORT
  value: {{ .ctx.Values.triton.ports.grpc | quote }}
{{- with include "glmvoice.tlsEnv" (dict "ctx" .ctx "role" "" "triton" true) }}
{{ . }}
{{- end }}
{{- end }}
