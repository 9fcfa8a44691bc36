{{/* The Corefile of the chart's own CoreDNS (dns.coredns.enabled). */}}
{{- define "maille.corefile" -}}
{{- $meshDomain := printf "%s.svc.%s" .Release.Namespace .Values.dns.clusterDomain -}}
maille.mesh:1053 {
    errors
    rewrite stop {
        name regex ^([a-z0-9-]+)\.([a-z0-9-]+)\.maille\.mesh\.$ {1}-6d61696c6c65-{2}.{{ $meshDomain }}.
        answer name ^([a-z0-9-]+)-6d61696c6c65-([a-z0-9-]+)\.{{ $meshDomain | replace "." "\\." }}\.$ {1}.{2}.maille.mesh.
    }
    kubernetes {{ .Values.dns.clusterDomain }} {
        namespaces {{ .Release.Namespace }}
    }
    template ANY ANY maille.mesh {
        rcode NXDOMAIN
    }
    cache 30
    reload
}
.:1053 {
    errors
    health :8080
    ready :8181
}
{{- end -}}
