{{/* The chart's name, and the release's full name (objects are named after it). */}}
{{- define "tally.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tally.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: tally-collector, tally-netmon, ... */}}
{{- define "tally.componentName" -}}
{{- printf "%s-%s" (include "tally.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "tally.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tally.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "appliance"). */}}
{{- define "tally.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tally.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tally.componentLabels" -}}
{{ include "tally.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The one image. global.imageRegistry replaces image.registry, so a user who mirrors this image
installs with nothing pulled from anywhere else. Pinned by digest when image.digest is set.
*/}}
{{- define "tally.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
{{- $repository := .Values.image.repository -}}
{{- $reference := "" -}}
{{- if .Values.image.digest -}}
{{- $reference = printf "@%s" .Values.image.digest -}}
{{- else -}}
{{- $reference = printf ":%s" (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- if $registry -}}
{{- printf "%s/%s%s" $registry $repository $reference -}}
{{- else -}}
{{- printf "%s%s" $repository $reference -}}
{{- end -}}
{{- end -}}

{{- define "tally.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Names the appliance is reached by; its server certificate carries all of them. */}}
{{- define "tally.applianceHost" -}}
{{- printf "%s.%s.svc" (include "tally.componentName" (dict "root" . "component" "appliance")) .Release.Namespace -}}
{{- end -}}

{{- define "tally.serverNames" -}}
{{- $svc := include "tally.componentName" (dict "root" . "component" "appliance") -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) "localhost" "127.0.0.1" -}}
{{- concat $names .Values.appliance.extraServerNames | uniq | join "," -}}
{{- end -}}

{{/* The Secret the appliance keeps its CA in (and the ConfigMap it publishes the certificate in). */}}
{{- define "tally.caName" -}}
{{- printf "%s-ca" (include "tally.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tally.applianceFlightURL" -}}
{{- printf "https://%s:%v" (include "tally.applianceHost" .) .Values.appliance.ports.flight -}}
{{- end -}}

{{- define "tally.applianceBootstrapURL" -}}
{{- printf "https://%s:%v" (include "tally.applianceHost" .) .Values.appliance.ports.bootstrap -}}
{{- end -}}

{{/*
Restricted container security context: non-root, read-only root filesystem, no privilege
escalation, no capabilities, seccomp RuntimeDefault.
*/}}
{{- define "tally.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tally.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The rules of an RBAC file shipped in files/rbac/ (a copy of the agent's own rbac.yaml, which
its tests run under): the chart renders exactly those rules.
*/}}
{{- define "tally.rulesFromFile" -}}
{{- $doc := .root.Files.Get .file | fromYaml -}}
{{- if not $doc.rules -}}
{{- fail (printf "%s has no rules" .file) -}}
{{- end -}}
{{- toYaml $doc.rules -}}
{{- end -}}
