{{/* Chart name. */}}
{{- define "vidi-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "vidi-operator.fullname" -}}
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

{{- define "vidi-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vidi-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vidi-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vidi-operator.labels" -}}
helm.sh/chart: {{ include "vidi-operator.chart" . }}
{{ include "vidi-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vidi-operator
{{- end }}

{{- define "vidi-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vidi-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest. Call with (dict "image" .Values.image "root" .). */}}
{{- define "vidi-operator.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "vidi-operator.image" -}}
{{- include "vidi-operator.imageRef" (dict "image" .Values.image "root" .) }}
{{- end }}

{{- define "vidi-operator.vidiImage" -}}
{{- include "vidi-operator.imageRef" (dict "image" .Values.vidiImage "root" .) }}
{{- end }}

{{- define "vidi-operator.gateImage" -}}
{{- default (include "vidi-operator.image" .) .Values.gateImage }}
{{- end }}

{{- define "vidi-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The rules `vidi-operator rbac` generated (files/rbac-rules.yaml), as a list. */}}
{{- define "vidi-operator.rbacRules" -}}
{{- $rules := .Files.Get "files/rbac-rules.yaml" | fromYamlArray }}
{{- if not $rules }}
{{- fail "files/rbac-rules.yaml is missing or empty: run `vidi-operator rbac > charts/vidi-operator/files/rbac-rules.yaml`" }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/* The subset of the generated rules on cluster-scoped nodes. */}}
{{- define "vidi-operator.nodeRules" -}}
{{- $out := list }}
{{- range (.Files.Get "files/rbac-rules.yaml" | fromYamlArray) }}
{{- if has "nodes" .resources }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- if not $out }}
{{- fail "files/rbac-rules.yaml has no rule on nodes" }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The subset of the generated rules for leader-election Leases. */}}
{{- define "vidi-operator.leaseRules" -}}
{{- $out := list }}
{{- range (.Files.Get "files/rbac-rules.yaml" | fromYamlArray) }}
{{- if has "coordination.k8s.io" .apiGroups }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- if not $out }}
{{- fail "files/rbac-rules.yaml has no coordination.k8s.io rule for the leader-election Lease" }}
{{- end }}
{{- toYaml $out }}
{{- end }}
