{{/* RBAC rules, shared by the controller and the cleanup hook. See docs/install.md. */}}

{{/* Cluster-scoped names carry the namespace: two releases of the same name may coexist. */}}
{{- define "maille.clusterName" -}}
{{- printf "%s-%s" .name .ctx.Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* What the controller reads everywhere, and the Events it writes on the objects it reads
     (it reads an Event back to bump its count). */}}
{{- define "maille.rules.cluster" -}}
- apiGroups: [""]
  resources: [services, pods]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [get, create, patch]
- apiGroups: [access.smi-spec.io]
  resources: [traffictargets]
  verbs: [get, list, watch]
- apiGroups: [specs.smi-spec.io]
  resources: [httproutegroups, tcproutes, udproutes]
  verbs: [get, list, watch]
- apiGroups: [split.smi-spec.io]
  resources: [trafficsplits]
  verbs: [get, list, watch]
# Gateway API routes, and the status entries the leader writes on them (docs/gateway-api.md).
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes, grpcroutes]
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes/status, grpcroutes/status]
  verbs: [patch]
{{- if .Values.identity.enabled }}
# Mesh identity: who a proxy's token stands for (the pod it names is read with pods/get).
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
{{- end }}
{{- end -}}

{{/* Shadow Services live in the mesh namespace only. */}}
{{- define "maille.rules.mesh" -}}
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, update, patch, delete]
{{- if .Values.identity.enabled }}
# The mesh CA: read and watched by name (a list or watch with the field selector
# metadata.name, which resourceNames allows); created once when absent (create cannot be
# limited by name).
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [{{ include "maille.identity.caSecret" . }}]
  verbs: [get, list, watch]
{{- if .Values.identity.ca.create }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
{{- end }}
# The mesh roots proxies pin: written by name with server-side apply (created once).
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [{{ include "maille.identity.trustConfigMap" . }}]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create]
{{- end }}
{{- if .Values.controller.leaderElection.enabled }}
# Leader election: the Lease is created once (create cannot be limited by name), then read and
# renewed by name.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [maille-controller]
  verbs: [get, update]
{{- end }}
{{- end -}}

{{/* prepare/cleanup: the cluster DNS configuration in kube-system. Only the ConfigMaps and
     Deployments named in dns.rbac may be changed. `create` cannot be limited by name in
     Kubernetes RBAC; it is needed for kube-dns clusters without a kube-dns ConfigMap, which
     `cleanup` deletes again when `prepare` created it. Deployments are listed to find the
     cluster DNS by its k8s-app=kube-dns label; a pod-template annotation restarts CoreDNS
     when its Corefile changed. */}}
{{- define "maille.rules.dns" -}}
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: {{ toJson .Values.dns.rbac.configMaps }}
  verbs: [get, update, patch]
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [kube-dns]
  verbs: [delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list]
- apiGroups: [apps]
  resources: [deployments]
  resourceNames: {{ toJson .Values.dns.rbac.deployments }}
  verbs: [get, update, patch]
{{- end -}}
