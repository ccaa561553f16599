{{/* Name of the chart. */}}
{{- define "engram.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name if it already contains the chart name. */}}
{{- define "engram.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "engram.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "engram.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "engram.membersService" -}}{{ include "engram.fullname" . }}-members{{- end -}}
{{- define "engram.clientService" -}}{{ include "engram.fullname" . }}-client{{- end -}}
{{- define "engram.tlsSecret" -}}{{ default (printf "%s-server-tls" (include "engram.fullname" .)) .Values.tls.secretName }}{{- end -}}

{{- define "engram.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "engram.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: app.kubernetes.io/name is also the Prometheus job label (job="engram"). */}}
{{- define "engram.selectorLabels" -}}
app.kubernetes.io/name: {{ include "engram.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "engram.labels" -}}
{{ include "engram.selectorLabels" . }}
app.kubernetes.io/part-of: engram
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "engram.scheme" -}}{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}{{- end -}}

{{/* Whether the engine keeps its data in a data directory on a volume (lsm, btree). */}}
{{- define "engram.persistent" -}}{{ if has .Values.engine (list "lsm" "btree") }}true{{ end }}{{- end -}}

{{/* --election-lease in whole seconds (rounded up). */}}
{{- define "engram.leaseSeconds" -}}
{{- $l := toString .Values.electionLease -}}
{{- if regexMatch "^[0-9]+ms$" $l -}}{{ div (add (int (trimSuffix "ms" $l)) 999) 1000 }}
{{- else if regexMatch "^[0-9]+s$" $l -}}{{ int (trimSuffix "s" $l) }}
{{- else if regexMatch "^[0-9]+m$" $l -}}{{ mul (int (trimSuffix "m" $l)) 60 }}
{{- else -}}{{ fail (printf "electionLease %q: give a whole number of ms, s or m, e.g. 5s" $l) }}
{{- end -}}
{{- end -}}

{{/* tikv.pdEndpoints as one comma-separated string (a list or a string in values). */}}
{{- define "engram.pdEndpoints" -}}
{{- $pd := .Values.tikv.pdEndpoints -}}
{{- if kindIs "slice" $pd -}}{{ join "," $pd }}{{- else -}}{{ toString (default "" $pd) }}{{- end -}}
{{- end -}}

{{/* PDB maxUnavailable: the value, or 0 for one member and 1 for several. */}}
{{- define "engram.maxUnavailable" -}}
{{- $v := .Values.podDisruptionBudget.maxUnavailable -}}
{{- if or (kindIs "invalid" $v) (eq (toString $v) "") -}}{{ if gt (int .Values.replicas) 1 }}1{{ else }}0{{ end }}
{{- else -}}{{ $v }}{{- end -}}
{{- end -}}

{{/* Anti-affinity: the value, or hard for several members and soft for one. */}}
{{- define "engram.antiAffinity" -}}
{{- $v := toString (default "" .Values.podAntiAffinity) -}}
{{- if eq $v "" -}}{{ if gt (int .Values.replicas) 1 }}hard{{ else }}soft{{ end }}{{- else -}}{{ $v }}{{- end -}}
{{- end -}}

{{/* Refuses values that would deploy something broken; rendered by the StatefulSet. */}}
{{- define "engram.validate" -}}
{{- if hasKey .Values "replicaCount" -}}
{{- fail "replicaCount was renamed: set replicas (and engine: tikv for more than one member)" -}}
{{- end -}}
{{- if hasKey .Values.engram "engine" -}}
{{- fail "engram.engine was renamed: set engine (lsm, btree, memory or tikv)" -}}
{{- end -}}
{{- if not (has .Values.engine (list "lsm" "btree" "memory" "tikv")) -}}
{{- fail (printf "engine must be lsm, btree, memory or tikv (got %q)" (toString .Values.engine)) -}}
{{- end -}}
{{- $replicas := int .Values.replicas -}}
{{- if lt $replicas 1 -}}
{{- fail (printf "replicas must be at least 1 (got %d)" $replicas) -}}
{{- end -}}
{{- if eq .Values.engine "tikv" -}}
{{- if eq (include "engram.pdEndpoints" .) "" -}}
{{- fail "engine=tikv needs tikv.pdEndpoints: the PD endpoints (host:port) of your TiKV cluster" -}}
{{- end -}}
{{- if eq (toString .Values.tikv.keyPrefix) "" -}}
{{- fail "engine=tikv needs a non-empty tikv.keyPrefix (e.g. engram/)" -}}
{{- end -}}
{{- else if ne $replicas 1 -}}
{{- fail (printf "replicas must be 1 with engine=%s (got %d): the embedded engine is one data directory that only one member can open. For several members use engine=tikv with tikv.pdEndpoints" .Values.engine $replicas) -}}
{{- end -}}
{{- $lease := int (include "engram.leaseSeconds" .) -}}
{{- $minGrace := add (mul 2 $lease) 10 -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) $minGrace -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least 2 x electionLease + 10s (%ds): on SIGTERM a leader releases the lead at once, then Engram takes up to 2 x electionLease + 4s to stop" (int .Values.terminationGracePeriodSeconds) $minGrace) -}}
{{- end -}}
{{- if not (has (include "engram.antiAffinity" .) (list "soft" "hard")) -}}
{{- fail (printf "podAntiAffinity must be soft, hard or \"\" (got %q)" (toString .Values.podAntiAffinity)) -}}
{{- end -}}
{{- end -}}
