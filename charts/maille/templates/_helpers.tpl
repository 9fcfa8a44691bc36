{{/* Names, labels and shared values of the Maille chart. */}}

{{- define "maille.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-maille`, or just the release name when it already contains the chart name. */}}
{{- define "maille.fullname" -}}
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

{{- define "maille.controller.fullname" -}}
{{- printf "%s-controller" (include "maille.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maille.proxy.fullname" -}}
{{- printf "%s-proxy" (include "maille.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maille.cleanup.fullname" -}}
{{- printf "%s-cleanup" (include "maille.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maille.coredns.fullname" -}}
{{- printf "%s-coredns" (include "maille.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "maille.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "maille.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: maille
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "proxy"). */}}
{{- define "maille.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maille.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "maille.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* A port range value as the binaries take it: `start-end`. */}}
{{- define "maille.range" -}}
{{- printf "%d-%d" (int .start) (int (sub (add (int .start) (int .size)) 1)) -}}
{{- end -}}

{{- define "maille.controllerURL" -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "maille.controller.fullname" .) .Release.Namespace .Values.dns.clusterDomain (int .Values.controller.apiPort) -}}
{{- end -}}

{{/* Logging of the controller (--log and --log-format, as environment variables so that the
     prepare and cleanup steps read them too). */}}
{{- define "maille.logEnv" -}}
- name: MAILLE_LOG
  value: {{ .Values.log.level | quote }}
- name: MAILLE_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- end -}}

{{/* The labels of the proxy pods, as the controller's --proxy-selector takes them: the
     shadow Services it writes select these pods. */}}
{{- define "maille.proxySelector" -}}
{{- $labels := include "maille.selectorLabels" (dict "ctx" . "component" "proxy") | fromYaml -}}
{{- $pairs := list -}}
{{- range $k, $v := $labels -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* Pod security shared by every Maille container: no root, no privileges, read-only root. */}}
{{- define "maille.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "maille.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The flags of `maille-controller prepare` and `cleanup`. */}}
{{- define "maille.dnsArgs" -}}
- --namespace={{ .Release.Namespace }}
- --cluster-domain={{ .Values.dns.clusterDomain }}
- --dns-service={{ include "maille.coredns.fullname" . }}
{{- with .Values.dns.corednsVersion }}
- --coredns-version={{ . }}
{{- end }}
{{- end -}}

{{/* The Secret that holds the mesh CA. */}}
{{/* The ConfigMap holding the mesh roots proxies pin (docs/security.md). */}}
{{- define "maille.identity.trustConfigMap" -}}
{{- .Values.identity.trustConfigMap | default (printf "%s-identity-trust" (include "maille.fullname" .)) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The controller's identity listener (TLS), as proxies dial it. */}}
{{- define "maille.identityURL" -}}
{{- printf "https://%s.%s.svc.%s:%d" (include "maille.controller.fullname" .) .Release.Namespace .Values.dns.clusterDomain (int .Values.identity.port) -}}
{{- end -}}

{{/* The names of the identity listener's certificate: the controller Service's DNS names. */}}
{{- define "maille.identityServerNames" -}}
{{- $svc := include "maille.controller.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- printf "%s,%s.%s,%s.%s.svc,%s.%s.svc.%s" $svc $svc $ns $svc $ns $svc $ns .Values.dns.clusterDomain -}}
{{- end -}}

{{- define "maille.identity.caSecret" -}}
{{- .Values.identity.ca.secretName | default (printf "%s-mesh-ca" (include "maille.fullname" .)) -}}
{{- end -}}
