{{/*
Chart name, truncated to 63 characters (the DNS-1123 label limit).
*/}}
{{- define "crucible.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart>, or the release name alone when it already
contains the chart name. Truncated to 63 characters.
*/}}
{{- define "crucible.fullname" -}}
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

{{/*
<fullname>-<suffix>, truncated so the whole stays within 63 characters.
Usage: include "crucible.suffixedName" (dict "root" . "suffix" "postgresql")
*/}}
{{- define "crucible.suffixedName" -}}
{{- $max := sub 62 (len .suffix) | int }}
{{- printf "%s-%s" (include "crucible.fullname" .root | trunc $max | trimSuffix "-") .suffix }}
{{- end }}

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "crucible.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the release: stable for its life (never add version labels here).
*/}}
{{- define "crucible.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crucible.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of one component (api, postgresql, ray-head, ray-worker).
Usage: include "crucible.componentSelectorLabels" (dict "root" . "component" "api")
*/}}
{{- define "crucible.componentSelectorLabels" -}}
{{ include "crucible.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The recommended app.kubernetes.io/* labels of one component, on every object.
Usage: include "crucible.labels" (dict "root" . "component" "api")
*/}}
{{- define "crucible.labels" -}}
helm.sh/chart: {{ include "crucible.chart" .root }}
{{ include "crucible.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: crucible
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/*
API container image; the tag defaults to the chart's appVersion.
*/}}
{{- define "crucible.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
ServiceAccount of the API pods.
*/}}
{{- define "crucible.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "crucible.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the in-chart PostgreSQL StatefulSet and Service.
*/}}
{{- define "crucible.postgresqlName" -}}
{{- include "crucible.suffixedName" (dict "root" . "suffix" "postgresql") }}
{{- end }}

{{/*
Name of the Secret that holds an external database's URL: the existing one named in values, or
the one this chart creates from database.url.
*/}}
{{- define "crucible.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- include "crucible.suffixedName" (dict "root" . "suffix" "database") }}
{{- end }}
{{- end }}

{{/*
Name of the RayCluster. KubeRay derives Service and pod names from it (<name>-head-svc,
<name>-<group>-worker-<hash>), so it is kept short.
*/}}
{{- define "crucible.rayClusterName" -}}
{{- if .Values.rayCluster.name }}
{{- .Values.rayCluster.name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-ray" (include "crucible.fullname" . | trunc 36 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
In-cluster DNS name of the RayCluster's head Service.
*/}}
{{- define "crucible.rayHeadHost" -}}
{{- printf "%s-head-svc.%s.svc" (include "crucible.rayClusterName" .) .Release.Namespace }}
{{- end }}

{{/*
Ray GCS address (RAY_ADDRESS): ray.address, or the chart's RayCluster.
*/}}
{{- define "crucible.rayAddress" -}}
{{- if .Values.ray.address }}
{{- .Values.ray.address }}
{{- else if .Values.rayCluster.enabled }}
{{- printf "%s:6379" (include "crucible.rayHeadHost" .) }}
{{- else }}
{{- required "ray.address is required when rayCluster.enabled is false: the GCS host:port of your Ray cluster" .Values.ray.address }}
{{- end }}
{{- end }}

{{/*
Ray dashboard / Jobs API URL: ray.dashboardUrl, or the chart's RayCluster.
*/}}
{{- define "crucible.rayDashboardUrl" -}}
{{- if .Values.ray.dashboardUrl }}
{{- .Values.ray.dashboardUrl }}
{{- else if .Values.rayCluster.enabled }}
{{- printf "http://%s:8265" (include "crucible.rayHeadHost" .) }}
{{- else }}
{{- required "ray.dashboardUrl is required when rayCluster.enabled is false: the http(s) URL of your Ray dashboard / Jobs API" .Values.ray.dashboardUrl }}
{{- end }}
{{- end }}

{{/*
Base URL of the Serve endpoints (CRUCIBLE_SERVE_URL).
*/}}
{{- define "crucible.serveUrl" -}}
{{- if .Values.serve.publicUrl }}
{{- .Values.serve.publicUrl }}
{{- else if .Values.serve.ingress.enabled }}
{{- printf "%s://%s" (ternary "https" "http" .Values.serve.ingress.tls.enabled) .Values.serve.ingress.host }}
{{- else if .Values.rayCluster.enabled }}
{{- printf "http://%s:8000" (include "crucible.rayHeadHost" .) }}
{{- else }}
{{- required "serve.publicUrl is required when rayCluster.enabled is false: the base URL of your Ray Serve HTTP proxy" .Values.serve.publicUrl }}
{{- end }}
{{- end }}

{{/*
Whether the API may count on the Ray cluster adding nodes ("true"/"false").
*/}}
{{- define "crucible.rayAutoscaling" -}}
{{- if .Values.rayCluster.enabled }}
{{- .Values.rayCluster.autoscaling.enabled | toString }}
{{- else }}
{{- .Values.config.rayAutoscaling | toString }}
{{- end }}
{{- end }}

{{/*
Artifact root: artifacts.root, or the mount path of the artifact volume.
*/}}
{{- define "crucible.artifactRoot" -}}
{{- default .Values.artifacts.mountPath .Values.artifacts.root }}
{{- end }}

{{/*
Name of the artifact PersistentVolumeClaim.
*/}}
{{- define "crucible.artifactsClaimName" -}}
{{- default (include "crucible.suffixedName" (dict "root" . "suffix" "artifacts")) .Values.artifacts.persistence.existingClaim }}
{{- end }}

{{/*
In-cluster URL of the API Service (what Ray job drivers call back to).
*/}}
{{- define "crucible.apiUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "crucible.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{/*
The Ray token env of every Ray container and of the autoscaler: token auth on.
*/}}
{{- define "crucible.rayAuthEnv" -}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "ray.authTokenSecret is required: the Secret with key 'auth_token' that holds the Ray cluster's token" .Values.ray.authTokenSecret }}
      key: auth_token
{{- end }}

{{/*
Pod template of one Ray group (head or worker).
Usage: include "crucible.rayPodTemplate" (dict "root" . "component" "ray-head" "container"
"ray-head" "image" "repo:tag" "group" $groupValues "gpus" 0 "ports" $ports "extraLabels" $labels)
*/}}
{{- define "crucible.rayPodTemplate" -}}
{{- $root := .root }}
{{- $rc := $root.Values.rayCluster -}}
metadata:
  labels:
    {{- include "crucible.labels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- with .extraLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  automountServiceAccountToken: false
  {{- with $rc.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ .image | quote }}
      imagePullPolicy: {{ $rc.image.pullPolicy }}
      env:
        {{- include "crucible.rayAuthEnv" $root | nindent 8 }}
        {{- with $rc.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        {{- toYaml .ports | nindent 8 }}
      resources:
        {{- $resources := deepCopy (default dict .group.resources) }}
        {{- if gt (int .gpus) 0 }}
        {{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $resources.requests)) }}
        {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $resources.limits)) }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      {{- with $rc.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      lifecycle:
        preStop:
          exec:
            command: ["/bin/sh", "-c", "ray stop"]
      volumeMounts:
        - name: shm
          mountPath: /dev/shm
        {{- if $root.Values.artifacts.persistence.enabled }}
        - name: artifacts
          mountPath: {{ $root.Values.artifacts.mountPath }}
        {{- end }}
  volumes:
    # Ray's object store lives in shared memory; the container default (64Mi) is too small.
    - name: shm
      emptyDir:
        medium: Memory
    {{- if $root.Values.artifacts.persistence.enabled }}
    - name: artifacts
      persistentVolumeClaim:
        claimName: {{ include "crucible.artifactsClaimName" $root }}
    {{- end }}
{{- end }}
