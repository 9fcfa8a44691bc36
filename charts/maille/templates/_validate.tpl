{{/* Checks across values that the schema cannot express; rendered by the controller Deployment. */}}
{{- define "maille.validate" -}}
{{- $r := .Values.ports -}}
{{- $names := list "http" "tcp" "udp" -}}
{{- range $i, $a := $names -}}
{{- $ra := index $r $a -}}
{{- $endA := add (int $ra.start) (int $ra.size) -}}
{{- if gt (int $endA) 65536 -}}
{{- fail (printf "ports.%s: range %s goes past port 65535" $a (include "maille.range" $ra)) -}}
{{- end -}}
{{- $admin := int $.Values.proxy.adminPort -}}
{{- if and (ge $admin (int $ra.start)) (lt $admin (int $endA)) -}}
{{- fail (printf "proxy.adminPort: %d lies inside ports.%s (%s)" $admin $a (include "maille.range" $ra)) -}}
{{- end -}}
{{- range $j, $b := $names -}}
{{- if lt $i $j -}}
{{- $rb := index $r $b -}}
{{- $endB := add (int $rb.start) (int $rb.size) -}}
{{- if and (lt (int $ra.start) (int $endB)) (lt (int $rb.start) (int $endA)) -}}
{{- fail (printf "ports.%s (%s) and ports.%s (%s) overlap; give each its own range" $a (include "maille.range" $ra) $b (include "maille.range" $rb)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int .Values.controller.replicas) 1) (not .Values.controller.leaderElection.enabled) -}}
{{- fail (printf "controller.replicas: %d replicas need controller.leaderElection.enabled (without it every replica writes shadow services)" (int .Values.controller.replicas)) -}}
{{- end -}}
{{- if and (ne .Values.mtls "disabled") (not .Values.identity.enabled) -}}
{{- fail (printf "mtls: %s needs identity.enabled (node proxies need certificates for the tunnel); set mtls: disabled to run without identity" .Values.mtls) -}}
{{- end -}}
{{- if has .Release.Namespace .Values.watchNamespaces -}}
{{- fail (printf "watchNamespaces: %q is the mesh's own namespace, which is never meshed; install Maille in its own namespace" .Release.Namespace) -}}
{{- end -}}
{{- end -}}
